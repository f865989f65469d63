//! PATCH entries: R4 carries a JSON Patch in a Bundle as a `Binary` resource whose
//! `contentType` is `application/json-patch+json` and whose `data` is the patch, base64
//! (http.html#patch). FHIRPath Patch (`Parameters`) is refused, as on `PATCH /{type}/{id}`.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use careplane_fhir::IssueCode;
use serde_json::Value;

const JSON_PATCH: &str = "application/json-patch+json";

/// Why an entry's resource is not a usable patch: which field (below the entry) and why.
#[derive(Debug)]
pub struct BodyError {
    pub code: IssueCode,
    pub field: &'static str,
    pub message: String,
}

fn refuse(code: IssueCode, field: &'static str, message: impl Into<String>) -> BodyError {
    BodyError {
        code,
        field,
        message: message.into(),
    }
}

/// The JSON Patch a PATCH entry's `resource` carries.
pub fn json_patch(resource: Option<&Value>) -> Result<json_patch::Patch, BodyError> {
    let Some(resource) = resource else {
        return Err(refuse(
            IssueCode::Required,
            "",
            "PATCH needs entry.resource: a Binary holding a JSON Patch",
        ));
    };
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("Binary") => {}
        Some("Parameters") => {
            return Err(refuse(
                IssueCode::NotSupported,
                ".resource",
                "FHIRPath Patch (Parameters) is not supported; send a JSON Patch as a Binary \
                 with contentType application/json-patch+json",
            ))
        }
        other => {
            return Err(refuse(
                IssueCode::Invalid,
                ".resource",
                format!(
                    "a PATCH entry's resource must be a Binary holding a JSON Patch, not {}",
                    other.unwrap_or("a resource without resourceType")
                ),
            ))
        }
    }
    let content_type = resource.get("contentType").and_then(Value::as_str);
    let media_type = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim);
    if !media_type.is_some_and(|m| m.eq_ignore_ascii_case(JSON_PATCH)) {
        return Err(refuse(
            IssueCode::NotSupported,
            ".resource.contentType",
            format!(
                "Binary.contentType must be {JSON_PATCH}, got {}",
                content_type.unwrap_or("nothing")
            ),
        ));
    }
    let data = resource
        .get("data")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            refuse(
                IssueCode::Required,
                ".resource.data",
                "Binary.data must hold the JSON Patch, base64-encoded",
            )
        })?;
    let bytes = decode_base64(data).ok_or_else(|| {
        refuse(
            IssueCode::Value,
            ".resource.data",
            "Binary.data is not valid base64",
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        refuse(
            IssueCode::Invalid,
            ".resource.data",
            format!("Binary.data is not a valid JSON Patch document: {e}"),
        )
    })
}

/// Standard base64 (RFC 4648 §4, the alphabet of FHIR `base64Binary`), padding optional.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes `Binary.data`; whitespace (line-wrapped base64) is ignored.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    BASE64.decode(compact).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_decodes_with_and_without_padding_and_refuses_garbage() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\nbG8h").unwrap(), b"hello!");
        assert_eq!(decode_base64("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("aGVsbG8*").is_none());
        assert!(decode_base64("aG=Vs").is_none(), "data after padding");
        assert!(decode_base64("aGVsb").is_none(), "a lone trailing symbol");
        assert!(decode_base64("aGk==").is_none(), "too much padding");
    }

    #[test]
    fn only_a_binary_json_patch_is_a_patch_body() {
        let ops = r#"[{"op":"replace","path":"/active","value":false}]"#;
        // "[{"op":"replace","path":"/active","value":false}]" in base64.
        let data = "W3sib3AiOiJyZXBsYWNlIiwicGF0aCI6Ii9hY3RpdmUiLCJ2YWx1ZSI6ZmFsc2V9XQ==";
        assert_eq!(decode_base64(data).unwrap(), ops.as_bytes());
        let binary = json!({"resourceType": "Binary",
                            "contentType": "application/json-patch+json", "data": data});
        assert_eq!(json_patch(Some(&binary)).unwrap().0.len(), 1);

        let wrong_type =
            json!({"resourceType": "Binary", "contentType": "text/plain", "data": data});
        assert_eq!(
            json_patch(Some(&wrong_type)).unwrap_err().field,
            ".resource.contentType"
        );
        let parameters = json!({"resourceType": "Parameters", "parameter": []});
        assert_eq!(
            json_patch(Some(&parameters)).unwrap_err().code,
            IssueCode::NotSupported
        );
        let patient = json!({"resourceType": "Patient"});
        assert!(json_patch(Some(&patient)).is_err());
        assert!(json_patch(None).is_err());
        let not_a_patch = json!({"resourceType": "Binary",
                                 "contentType": "application/json-patch+json", "data": "e30="});
        assert_eq!(
            json_patch(Some(&not_a_patch)).unwrap_err().field,
            ".resource.data"
        );
    }
}
