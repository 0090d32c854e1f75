//! Placeholder: filled in by the generated suite.
