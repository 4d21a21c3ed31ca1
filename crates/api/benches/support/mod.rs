//! What the API's benchmarks share (each bench includes this module).

pub mod echo;
pub mod gateway;
