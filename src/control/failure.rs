//! Why tcplb could not start, sorted for the exit status.

/// Why tcplb could not start.
#[derive(Debug)]
pub enum Failure {
    /// Bad input: exit 2.
    Input(String),
    /// The environment said no (port in use, permission, memory): exit 1.
    Start(String),
}
