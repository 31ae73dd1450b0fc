mod label;
mod pipeline;
