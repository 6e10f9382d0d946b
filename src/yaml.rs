//! YAML in and out, as raw JSON values.
