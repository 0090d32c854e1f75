// What each role may do, so the dashboard shows only the buttons a person can use. A mirror
// of the server's rules (server/src/auth.rs permissions, commands::role_may_send and the
// exec_shell template table); the server still checks every call, so a drift here hides or
// shows a button but never grants a right.

const RANK = { VIEWER: 0, OPERATOR: 1, MANAGER: 2, ADMIN: 3 };

/** The least role of each dashboard action. */
const ACTIONS = {
  dispatch: 'OPERATOR',
  manageDevices: 'MANAGER',
  manageGroups: 'MANAGER',
  deadLetters: 'MANAGER',
  uploadFirmware: 'ADMIN',
  deployFirmware: 'ADMIN',
  manageUsers: 'ADMIN',
};

/** The least role per command type; exec_shell goes by template. */
const COMMANDS = {
  force_sync: 'OPERATOR',
  pull_logs: 'OPERATOR',
  enable_device: 'OPERATOR',
  clear_queue: 'MANAGER',
  push_config: 'MANAGER',
  restart_service: 'ADMIN',
  reboot_os: 'ADMIN',
  shutdown_os: 'ADMIN',
  update_firmware: 'ADMIN',
  disable_device: 'ADMIN',
  exec_shell: 'OPERATOR',
};

const TEMPLATES = {
  disk_usage: 'OPERATOR',
  network_interfaces: 'OPERATOR',
  service_status: 'OPERATOR',
  ping: 'MANAGER',
  journal_tail: 'MANAGER',
};

const atLeast = (role, least) => (RANK[role] ?? -1) >= RANK[least];

export function can(role, action) {
  return atLeast(role, ACTIONS[action]);
}

export function canSend(role, type) {
  return atLeast(role, COMMANDS[type]);
}

/** Templates not in the table need ADMIN, as on the server. */
export function canRunTemplate(role, template) {
  return atLeast(role, TEMPLATES[template] || 'ADMIN');
}
