//! The diesel table definitions, one for both backends: every column type here maps to the
//! same Rust type on SQLite and PostgreSQL.

diesel::table! {
    users (id) {
        id -> Text,
        username -> Text,
        password_hash -> Text,
        role -> Text,
        disabled -> Bool,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        token_version -> BigInt,
    }
}

diesel::table! {
    revoked_tokens (jti) {
        jti -> Text,
        subject -> Text,
        expires_at -> Timestamp,
        revoked_at -> Timestamp,
    }
}

diesel::table! {
    devices (id) {
        id -> Text,
        name -> Text,
        company_id -> Nullable<Text>,
        production_line_id -> Nullable<Text>,
        status -> Text,
        version -> Nullable<Text>,
        last_seen -> Nullable<Timestamp>,
        remote_addr -> Nullable<Text>,
        token_id -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
        connection_mode -> Nullable<Text>,
        boot_id -> Nullable<Text>,
        run_id -> Nullable<Text>,
        metrics -> Nullable<Text>,
        status_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    device_presence (device_id) {
        device_id -> Text,
        replica_id -> Text,
        expires_at -> Timestamp,
    }
}

diesel::joinable!(device_presence -> devices (device_id));

diesel::table! {
    device_logs (id) {
        id -> Text,
        device_id -> Text,
        ts -> Timestamp,
        level -> Text,
        line -> Text,
    }
}

diesel::table! {
    device_events (id) {
        id -> Text,
        device_id -> Text,
        ts -> Timestamp,
        event_type -> Text,
        payload -> Text,
    }
}

diesel::table! {
    device_groups (id) {
        id -> Text,
        name -> Text,
        description -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    device_group_members (group_id, device_id) {
        group_id -> Text,
        device_id -> Text,
    }
}

diesel::table! {
    commands (id) {
        id -> Text,
        device_id -> Text,
        command_type -> Text,
        payload -> Text,
        status -> Text,
        success -> Nullable<Bool>,
        output -> Nullable<Text>,
        data -> Nullable<Text>,
        issued_by -> Nullable<Text>,
        timeout_ms -> BigInt,
        created_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
        completed_at -> Nullable<Timestamp>,
        progress -> Nullable<BigInt>,
        progress_message -> Nullable<Text>,
        expires_at -> Nullable<Timestamp>,
        confirm_previous -> Nullable<Text>,
        confirm_deadline -> Nullable<Timestamp>,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Text,
        ts -> Timestamp,
        actor -> Nullable<Text>,
        role -> Nullable<Text>,
        action -> Text,
        target -> Nullable<Text>,
        params -> Nullable<Text>,
        source -> Nullable<Text>,
        outcome -> Text,
    }
}

// Failure counts of unauthenticated attempts, shared by the replicas on PostgreSQL.
diesel::table! {
    failure_counts (limiter, subject) {
        limiter -> Text,
        subject -> Text,
        failures -> Integer,
        in_flight -> Integer,
        window_ends -> Timestamp,
    }
}

diesel::joinable!(commands -> devices (device_id));
diesel::joinable!(device_logs -> devices (device_id));
diesel::joinable!(device_events -> devices (device_id));
diesel::joinable!(device_group_members -> devices (device_id));
diesel::joinable!(device_group_members -> device_groups (group_id));
diesel::allow_tables_to_appear_in_same_query!(
    users,
    devices,
    device_presence,
    commands,
    audit_log,
    revoked_tokens,
    device_logs,
    device_events,
    device_groups,
    device_group_members,
);

// Edge → factory sync (`POST /api/v1/sync`): one table per record kind, and the cloud queue.

diesel::table! {
    aggregated_bottles (id) {
        id -> Text,
        device_id -> Text,
        company_id -> Text,
        payload -> Text,
        created_at -> Timestamp,
        received_at -> Timestamp,
    }
}

diesel::table! {
    aggregated_batches (id) {
        id -> Text,
        device_id -> Text,
        company_id -> Text,
        payload -> Text,
        created_at -> Timestamp,
        received_at -> Timestamp,
    }
}

diesel::table! {
    aggregated_pallets (id) {
        id -> Text,
        device_id -> Text,
        company_id -> Text,
        payload -> Text,
        created_at -> Timestamp,
        received_at -> Timestamp,
    }
}

diesel::table! {
    aggregated_batch_fixations (id) {
        id -> Text,
        device_id -> Text,
        company_id -> Text,
        payload -> Text,
        created_at -> Timestamp,
        received_at -> Timestamp,
    }
}

diesel::table! {
    cloud_sync_queue (id) {
        id -> Text,
        kind -> Text,
        company_id -> Text,
        payload -> Text,
        state -> Text,
        attempts -> BigInt,
        next_attempt_at -> Timestamp,
        last_error -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    aggregated_bottles,
    aggregated_batches,
    aggregated_pallets,
    aggregated_batch_fixations,
    cloud_sync_queue,
);

diesel::table! {
    firmware_releases (id) {
        id -> Text,
        project -> Text,
        version -> Text,
        channel -> Text,
        filename -> Text,
        stored_name -> Text,
        size_bytes -> BigInt,
        sha256 -> Text,
        signature_base64 -> Nullable<Text>,
        signature_expires_at -> Nullable<Timestamp>,
        uploaded_by -> Nullable<Text>,
        created_at -> Timestamp,
        allow_downgrade -> Bool,
        security_floor -> Nullable<BigInt>,
    }
}

diesel::table! {
    ota_boards (project, device_id) {
        project -> Text,
        device_id -> Text,
        fw_access -> Bool,
        production_line_id -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    firmware_deployments (id) {
        id -> Text,
        release_id -> Text,
        version -> Text,
        status -> Text,
        paused_reason -> Nullable<Text>,
        wave_size -> Integer,
        current_wave -> Integer,
        waves -> Integer,
        max_concurrent_downloads -> Nullable<Integer>,
        failure_threshold_percent -> Integer,
        soak_secs -> Integer,
        allow_downgrade -> Bool,
        created_by -> Nullable<Text>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    firmware_deployment_devices (deployment_id, device_id) {
        deployment_id -> Text,
        device_id -> Text,
        wave -> Integer,
        status -> Text,
        reason -> Nullable<Text>,
        command_id -> Nullable<Text>,
        run_id -> Nullable<Text>,
        soak_until -> Nullable<Timestamp>,
        verified_at -> Nullable<Timestamp>,
        updated_at -> Timestamp,
    }
}

diesel::joinable!(firmware_deployment_devices -> firmware_deployments (deployment_id));
diesel::allow_tables_to_appear_in_same_query!(
    firmware_releases,
    firmware_deployments,
    firmware_deployment_devices,
    audit_log
);

// Charts: metric time series (epoch milliseconds), their rollups and the online counts.

diesel::table! {
    metric_samples (device_id, metric, ts) {
        device_id -> Text,
        metric -> Text,
        ts -> BigInt,
        value -> Double,
    }
}

diesel::table! {
    metric_minutes (device_id, metric, bucket) {
        device_id -> Text,
        metric -> Text,
        bucket -> BigInt,
        min_value -> Double,
        max_value -> Double,
        sum_value -> Double,
        sample_count -> BigInt,
    }
}

diesel::table! {
    metric_hours (device_id, metric, bucket) {
        device_id -> Text,
        metric -> Text,
        bucket -> BigInt,
        min_value -> Double,
        max_value -> Double,
        sum_value -> Double,
        sample_count -> BigInt,
    }
}

diesel::table! {
    online_minutes (bucket) {
        bucket -> BigInt,
        devices -> BigInt,
    }
}

diesel::table! {
    online_hours (bucket) {
        bucket -> BigInt,
        devices -> BigInt,
    }
}

// Views (read only): the rows the production and fleet counters read, each with its minute as
// epoch milliseconds. diesel needs a key; these name a column, not a unique one.

diesel::table! {
    production_events (device_id, ts) {
        device_id -> Nullable<Text>,
        company_id -> Nullable<Text>,
        production_line_id -> Nullable<Text>,
        kind -> Nullable<Text>,
        ts -> Nullable<Timestamp>,
        minute -> Nullable<BigInt>,
    }
}

diesel::table! {
    command_minutes (ts) {
        status -> Nullable<Text>,
        ts -> Nullable<Timestamp>,
        minute -> Nullable<BigInt>,
    }
}

diesel::table! {
    deployment_device_minutes (ts) {
        status -> Nullable<Text>,
        ts -> Nullable<Timestamp>,
        minute -> Nullable<BigInt>,
    }
}
