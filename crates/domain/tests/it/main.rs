mod label;
mod pipeline;
mod quantity;
