//! Placeholder: filled in by the logins suite.
