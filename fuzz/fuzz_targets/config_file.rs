//! Fuzzes the config file reader (`tcplb::config::file::parse_bytes`, what `--config FILE`
//! and every SIGHUP run on the file's bytes): no input may panic; an error names a line and
//! column inside the text and shows no raw control character; a config it accepts is one
//! that validates again and has a summary line per service.
//!
//! cargo +nightly fuzz run config_file -- -dict=config_file.dict
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcplb::config::ConfigError;
use tcplb::config::file::parse_bytes;

fuzz_target!(|data: &[u8]| {
    match parse_bytes(data, "fuzz.toml", &Default::default()) {
        Ok(config) => {
            assert!(!config.services.is_empty());
            assert!(config.validate().is_ok());
            assert_eq!(config.summary().len(), config.services.len());
        }
        Err(error) => {
            if let ConfigError::At { line, column, .. } = &error {
                let lines = data.split(|&b| b == b'\n').count();
                assert!(*line >= 1 && *line <= lines, "line {line} of {lines}");
                assert!(*column >= 1);
            }
            let shown = error.to_string();
            assert!(
                !shown.chars().any(char::is_control),
                "a control character in {shown:?}"
            );
        }
    }
});
