//! FHIR search, the pure half: the FHIRPath subset the official SearchParameter expressions
//! use, index extraction on write, and parsing of search requests. Storage turns the parsed
//! request into SQL over the index tables; nothing here does I/O.

pub mod compartment;
pub mod date;
pub mod fhirpath;
pub mod index;
pub mod query;
pub mod text;
pub mod ucum;
