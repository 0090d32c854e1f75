//! Placeholder: filled in by the push_config suite.
