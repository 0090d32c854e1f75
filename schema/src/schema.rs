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

diesel::joinable!(commands -> devices (device_id));
diesel::allow_tables_to_appear_in_same_query!(users, devices, commands, audit_log, revoked_tokens);
