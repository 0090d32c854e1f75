//! Placeholder: filled in by the input suite.
