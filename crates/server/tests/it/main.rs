//! Integration tests of the `hodei` binary.

mod cli_run;
mod cli_server;
mod pipeline;
mod templates;
