//! Placeholder: filled in by the dashboard suite.
