//! The one error every command returns, printed in one place (`main`) and
//! mapped to the exit code: 2 when the flags, the configuration or an input
//! named on the command line is at fault, 1 when the run failed.

use std::fmt;
use std::process::ExitCode;

use crate::settings::SettingsError;

/// Why a command failed.
#[derive(Debug)]
pub enum CliError {
    /// Bad flags, configuration or input: exit 2.
    Config(String),
    /// A failure at run time: exit 1.
    Run(String),
    /// The command has already said what is wrong (the differences it
    /// found, say): exit 1, nothing more is printed.
    Reported,
}

/// What a command returns.
pub type CliResult = Result<(), CliError>;

impl CliError {
    /// A run-time failure with `message`.
    pub fn run(message: impl fmt::Display) -> CliError {
        CliError::Run(message.to_string())
    }

    /// A configuration or input problem with `message`.
    pub fn config(message: impl fmt::Display) -> CliError {
        CliError::Config(message.to_string())
    }

    /// The process's exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Config(_) => ExitCode::from(2),
            CliError::Run(_) | CliError::Reported => ExitCode::FAILURE,
        }
    }

    /// Prints the error (unless already reported) and returns its exit code.
    pub fn report(self) -> ExitCode {
        match &self {
            CliError::Config(message) | CliError::Run(message) => {
                crate::cli::LogFormat::line("ERROR", &format!("error: {message}"))
            }
            CliError::Reported => {}
        }
        self.exit_code()
    }
}

impl From<SettingsError> for CliError {
    fn from(error: SettingsError) -> CliError {
        CliError::config(error)
    }
}

impl From<schemas::config::ConfigError> for CliError {
    fn from(error: schemas::config::ConfigError) -> CliError {
        CliError::config(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_2_and_the_run_is_1() {
        assert_eq!(CliError::config("x").exit_code(), ExitCode::from(2));
        assert_eq!(CliError::run("x").exit_code(), ExitCode::FAILURE);
        assert_eq!(CliError::Reported.exit_code(), ExitCode::FAILURE);
    }
}
