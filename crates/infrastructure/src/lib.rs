//! Hodei's adapters: implementations of the ports declared in
//! `hodei-application` (template files, repositories, orchestrators).
