DROP TABLE firmware_deployment_devices;
DROP TABLE firmware_deployments;
