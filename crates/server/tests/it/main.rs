//! Integration tests of the `hodei` binary.

mod pipeline;
mod templates;
