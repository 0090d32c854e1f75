//! The WebSocket contract's fixed values: the close codes a server ends a socket with and the
//! `code`s of its `error` frames. Agents and dashboards match on them, so they never change.

/// Close codes, sent in the WebSocket close frame.
pub mod close {
    /// Another socket authenticated as the same device; this one is replaced.
    pub const REPLACED: u16 = 4000;
    /// The token the socket authenticated with was revoked.
    pub const TOKEN_REVOKED: u16 = 4001;
    /// The socket did not authenticate, or its credentials were refused.
    pub const AUTH_FAILED: u16 = 4401;
    /// No auth frame came within the server's time.
    pub const AUTH_TIMEOUT: u16 = 4408;
    /// Too many refused frames (a device) or too many sockets (a dashboard user).
    pub const FLOOD: u16 = 4429;
    /// The same number as `FLOOD`, named for the dashboard's socket cap.
    pub const TOO_MANY: u16 = FLOOD;
}

/// The `code` of an `error` frame on a WebSocket.
pub mod ws_error {
    pub const INVALID_FRAME: &str = "invalid_frame";
    pub const UNAUTHENTICATED: &str = "unauthenticated";
    pub const FLOOD: &str = "flood";
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const AUTH_TIMEOUT: &str = "auth_timeout";
    pub const SESSION_CLOSED: &str = "session_closed";
    pub const AUTH_IN_PROGRESS: &str = "auth_in_progress";
}
