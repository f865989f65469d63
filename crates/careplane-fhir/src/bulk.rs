//! FHIR Bulk Data export (`$export`): what a kick-off asks for, shared by the API (which
//! validates it and enqueues the job) and the worker (which writes the NDJSON files).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::search::compartment::patient_compartment;
use crate::Definitions;

/// The job kind of exports.
pub const KIND: &str = "export";

/// Which resources an export covers (the three kick-off endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "level", content = "group")]
pub enum ExportLevel {
    /// `GET /$export`: every resource of the asked types.
    System,
    /// `GET /Patient/$export`: resources of Patient compartment types.
    Patient,
    /// `GET /Group/{id}/$export`: the group's member patients and their compartments.
    Group(String),
}

/// The job payload, written by the API at kick-off.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportRequest {
    #[serde(flatten)]
    pub level: ExportLevel,
    /// Resource types to export; empty: every type the level allows.
    pub types: Vec<String>,
    /// `_since`: only resources updated after this instant.
    pub since: Option<String>,
    /// The kick-off URL, echoed in the manifest.
    pub request: String,
    /// The FHIR base URL clients reach, for file URLs in the manifest.
    pub base: String,
    /// Kick-off time (the manifest's `transactionTime`).
    pub transaction_time: String,
}

impl ExportRequest {
    /// The types this export writes, in order: the asked ones, or every type the level allows.
    pub fn resolved_types(&self, defs: &Definitions) -> Vec<String> {
        if !self.types.is_empty() {
            return self.types.clone();
        }
        match self.level {
            ExportLevel::System => defs.resource_types().to_vec(),
            ExportLevel::Patient | ExportLevel::Group(_) => compartment_types(),
        }
    }
}

/// `Patient` and every type in the Patient compartment, sorted.
pub fn compartment_types() -> Vec<String> {
    let mut types: Vec<String> = patient_compartment().keys().cloned().collect();
    types.push("Patient".into());
    types.sort();
    types.dedup();
    types
}

/// A file name the export wrote (`Observation.3.ndjson`), checked before serving it.
pub fn is_export_file_name(name: &str) -> bool {
    let mut parts = name.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(t), Some(fence), Some("ndjson"), None)
            if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphabetic())
                && !fence.is_empty() && fence.chars().all(|c| c.is_ascii_digit())
    )
}

/// Where an export job's files live under the export root.
pub fn job_dir(root: &Path, job_id: &str) -> PathBuf {
    root.join(job_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_names_the_export_writes_are_served() {
        assert!(is_export_file_name("Observation.3.ndjson"));
        for bad in [
            "../etc/passwd",
            "Observation.ndjson",
            "Observation.3.ndjson.part",
            "Obs/x.3.ndjson",
            ".3.ndjson",
            "Observation.x.ndjson",
        ] {
            assert!(!is_export_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_level_round_trips_through_the_payload() {
        let request = ExportRequest {
            level: ExportLevel::Group("g1".into()),
            types: vec![],
            since: None,
            request: "r".into(),
            base: "b".into(),
            transaction_time: "t".into(),
        };
        let value = serde_json::to_value(&request).unwrap();
        assert_eq!(value["level"], "group");
        assert_eq!(value["group"], "g1");
        let back: ExportRequest = serde_json::from_value(value).unwrap();
        assert_eq!(back.level, ExportLevel::Group("g1".into()));
        let system: ExportRequest =
            serde_json::from_value(json!({"level": "system", "types": [], "since": null,
                "request": "r", "base": "b", "transaction_time": "t"}))
            .unwrap();
        assert_eq!(system.level, ExportLevel::System);
    }
}
