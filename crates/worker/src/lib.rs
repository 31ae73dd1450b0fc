//! The Hodei worker: connects to the server, runs the steps of the segment it
//! is assigned, streams their logs and reports the result.
