//! Placeholder: filled in by the flood suite.
