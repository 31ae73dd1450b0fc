//! Integration tests of the `hodei` binary.

mod templates;
