//! Transaction and batch Bundles (R4 http.html#transaction), for `POST /` and the importer.
//!
//! A transaction runs in one database transaction: entries in the spec's order (DELETE, POST,
//! PUT and PATCH, GET), `urn:uuid:`/`urn:oid:` fullUrls and conditional references resolved to
//! ids before anything is written, conditions locked and resolved inside the transaction, GETs
//! (reads and searches) seeing the transaction's own writes, and any failure rolls everything
//! back and is answered with one OperationOutcome naming the entry. A batch runs each entry as
//! its own one-entry transaction and reports each outcome.

mod entry;
mod patch;
mod references;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use axum::http::StatusCode;
use careplane_fhir::{operation_outcome, IssueCode, ResourceType};
use careplane_store::model::format_instant;
use careplane_store::{
    locked_matches, StoreError, StoreTx, StoredResource, TenantId, UpdateOptions,
};
use serde_json::{json, Map, Value};

pub use entry::{Action, Entry, EntryTarget};

use crate::error::{ApiError, Result};
use crate::extract::ReturnPreference;
use crate::handlers::patch::{apply, check_patched};
use crate::handlers::search::{search_options, searchset};
use crate::state::AppState;

/// How often a transaction that lost a race with another one is run again.
const MAX_ATTEMPTS: u32 = 4;

/// What the caller wants back for each entry, and the base for `fullUrl`s.
#[derive(Debug, Clone)]
pub struct ResponseOptions {
    pub return_: ReturnPreference,
    pub base_url: Option<String>,
}

/// Processes a transaction or batch Bundle and returns the `*-response` Bundle.
pub async fn process(
    state: &AppState,
    tenant: &TenantId,
    bundle: &Value,
    options: &ResponseOptions,
) -> Result<Value> {
    let kind = bundle_kind(bundle)?;
    let raw_entries = match bundle.get("entry") {
        None => &Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            return Err(ApiError::bad_request(
                IssueCode::Structure,
                "Bundle.entry must be an array",
            )
            .within("Bundle.entry", "Bundle"))
        }
    };
    let base = options.base_url.as_deref().unwrap_or_default();
    let limit = state.settings.max_bundle_entries;
    if raw_entries.len() > limit {
        return Err(ApiError::PayloadTooLarge(format!(
            "The Bundle has {} entries; at most {limit} are accepted per request",
            raw_entries.len()
        )));
    }
    match kind {
        Kind::Transaction => {
            let entries = raw_entries
                .iter()
                .enumerate()
                .map(|(i, raw)| entry::parse_entry(state, i, raw))
                .collect::<Result<Vec<_>>>()?;
            let results = with_retries(|| run(state, tenant, &entries, true, base)).await?;
            Ok(response_bundle("transaction-response", &results, options))
        }
        Kind::Batch => {
            let mut results = Vec::with_capacity(raw_entries.len());
            for (i, raw) in raw_entries.iter().enumerate() {
                let outcome = match entry::parse_entry(state, i, raw) {
                    Ok(entry) => {
                        let one = std::slice::from_ref(&entry);
                        with_retries(|| run(state, tenant, one, false, base))
                            .await
                            .map(|mut r| r.remove(0))
                    }
                    Err(e) => Err(e),
                };
                results.push(outcome.unwrap_or_else(EntryResult::failed));
            }
            Ok(response_bundle("batch-response", &results, options))
        }
    }
}

enum Kind {
    Transaction,
    Batch,
}

fn bundle_kind(bundle: &Value) -> Result<Kind> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ApiError::bad_request(
            IssueCode::Invalid,
            "POST to the base takes a Bundle of type transaction or batch",
        ));
    }
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => Ok(Kind::Transaction),
        Some("batch") => Ok(Kind::Batch),
        other => Err(ApiError::bad_request(
            IssueCode::Value,
            format!(
                "Bundle.type must be transaction or batch, got {}",
                other.unwrap_or("nothing")
            ),
        )
        .within("Bundle.type", "Bundle")),
    }
}

/// An error plus whether running the whole transaction again may succeed.
struct Failure {
    error: ApiError,
    transient: bool,
}

impl Failure {
    fn in_entry(entry: &Entry, error: StoreError) -> Failure {
        let transient = error.is_transient();
        Failure {
            error: entry.locate(ApiError::from(error), ""),
            transient,
        }
    }

    fn api(error: ApiError) -> Failure {
        Failure {
            error,
            transient: false,
        }
    }

    /// `error` at the entry's `field` (e.g. `".resource"`), final.
    fn at(entry: &Entry, field: &str, error: ApiError) -> Failure {
        Failure::api(entry.locate(error, field))
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure {
            transient: error.is_transient(),
            error: error.into(),
        }
    }
}

async fn with_retries<F, Fut>(mut run: F) -> Result<Vec<EntryResult>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Vec<EntryResult>, Failure>>,
{
    let mut attempt = 1;
    loop {
        match run().await {
            Ok(results) => return Ok(results),
            Err(f) if f.transient && attempt < MAX_ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                attempt += 1;
            }
            Err(f) => {
                if f.transient {
                    tracing::warn!(
                        attempts = attempt,
                        "Bundle write conflict persisted after retries"
                    );
                }
                return Err(f.error);
            }
        }
    }
}

/// What one entry did.
#[derive(Debug, Clone)]
struct EntryResult {
    status: StatusCode,
    /// The version written or read: `location`, `etag`, `lastModified`, and the body when the
    /// `Prefer` header asks for it.
    resource: Option<StoredResource>,
    /// A body returned whatever `Prefer` says: what a GET read, or its searchset Bundle.
    body: Option<Value>,
    outcome: Option<Value>,
}

impl EntryResult {
    fn done(status: StatusCode, resource: Option<StoredResource>) -> EntryResult {
        EntryResult {
            status,
            resource,
            body: None,
            outcome: None,
        }
    }

    fn failed(error: ApiError) -> EntryResult {
        let (status, issues) = error.status_and_issues();
        EntryResult {
            status,
            resource: None,
            body: None,
            outcome: Some(operation_outcome(&issues)),
        }
    }
}

/// A create or update whose target id is known and whose body awaits reference rewriting.
struct Write<'e> {
    entry: &'e Entry,
    /// Position of the entry in the Bundle (and in the response).
    slot: usize,
    id: String,
    /// A new resource: every POST, and a conditional PUT that matched nothing.
    create: bool,
}

/// Runs `entries` in one database transaction and commits, or rolls back on the first failure.
/// `placeholders_required`: in a transaction, a `urn:uuid:` reference that names no entry is
/// an error (it would dangle forever).
async fn run(
    state: &AppState,
    tenant: &TenantId,
    entries: &[Entry],
    placeholders_required: bool,
    base: &str,
) -> std::result::Result<Vec<EntryResult>, Failure> {
    // Positions in processing order; the sort is stable, so Bundle order holds within a step.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].action.step());
    let in_order = |action: fn(Action) -> bool| {
        order
            .iter()
            .copied()
            .filter(move |&i| action(entries[i].action))
            .map(|i| (i, &entries[i]))
    };
    let mut results: Vec<Option<EntryResult>> = vec![None; entries.len()];
    let mut tx = state.store.begin().await?;

    for (slot, e) in in_order(|a| a == Action::Delete) {
        let result = delete(tx.as_mut(), tenant, e)
            .await
            .map_err(|err| Failure::in_entry(e, err))?;
        results[slot] = Some(result);
    }

    // Decide every target id first, so references can point at resources not yet written.
    let mut targets: HashMap<String, String> = HashMap::new();
    let mut writes = Vec::new();
    for (slot, e) in in_order(|a| matches!(a, Action::Create | Action::Update | Action::Patch)) {
        let planned = plan_write(tx.as_mut(), tenant, e)
            .await
            .map_err(|err| Failure::in_entry(e, err))?;
        let (id, create) = match planned {
            Planned::Existing(existing) => {
                if let Some(url) = &e.full_url {
                    targets.insert(url.clone(), format!("{}/{}", e.resource_type, existing.id));
                }
                results[slot] = Some(EntryResult::done(StatusCode::OK, Some(existing)));
                continue;
            }
            Planned::Write { id, create } => (id, create),
        };
        if let Some(url) = &e.full_url {
            targets.insert(url.clone(), format!("{}/{id}", e.resource_type));
        }
        writes.push(Write {
            entry: e,
            slot,
            id,
            create,
        });
    }

    // Updates of known ids: their current versions in one round trip instead of one each.
    let updated: Vec<(ResourceType, String)> = writes
        .iter()
        .filter(|w| !w.create && w.entry.patch.is_none())
        .map(|w| (w.entry.resource_type.clone(), w.id.clone()))
        .collect();
    if !updated.is_empty() {
        tx.read_ahead(tenant, &updated).await?;
    }

    for w in &writes {
        if let Some(patch) = &w.entry.patch {
            let tx = tx.as_mut();
            let patched = apply_patch(
                state,
                tx,
                tenant,
                w,
                patch,
                &mut targets,
                placeholders_required,
            );
            results[w.slot] = Some(patched.await?);
            continue;
        }
        let mut body = w.entry.resource.clone().unwrap_or(Value::Null);
        resolve_references(
            state,
            tx.as_mut(),
            tenant,
            w.entry,
            &body,
            &mut targets,
            placeholders_required,
        )
        .await?;
        references::rewrite(&mut body, &targets);
        let result = write(state, tx.as_mut(), tenant, w, body)
            .await
            .map_err(|err| Failure::in_entry(w.entry, err))?;
        results[w.slot] = Some(result);
    }

    // Last, so reads and searches see every write of the transaction.
    for (slot, e) in in_order(|a| a == Action::Read) {
        results[slot] = Some(read(state, tx.as_mut(), tenant, e, base).await?);
    }
    // Dropping `tx` without commit (any `?` above) rolls everything back.
    tx.commit().await?;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| EntryResult::done(StatusCode::OK, None)))
        .collect())
}

async fn delete(
    tx: &mut dyn StoreTx,
    tenant: &TenantId,
    e: &Entry,
) -> careplane_store::Result<EntryResult> {
    let ids = match &e.target {
        EntryTarget::Instance(id) => vec![id.to_string()],
        EntryTarget::Conditional(c) => match locked_matches(tx, tenant, &e.resource_type, c).await?
        {
            many if many.len() > 1 => {
                return Err(StoreError::MultipleMatches { count: many.len() })
            }
            // No match: nothing to delete, which R4 answers as a success.
            ids => ids,
        },
        _ => Vec::new(),
    };
    for id in ids {
        tx.delete(tenant, &e.resource_type, &id, e.if_match).await?;
    }
    Ok(EntryResult::done(StatusCode::NO_CONTENT, None))
}

enum Planned {
    /// A conditional create matched: nothing to write, the entry points at this one.
    Existing(StoredResource),
    Write {
        id: String,
        create: bool,
    },
}

async fn plan_write(
    tx: &mut dyn StoreTx,
    tenant: &TenantId,
    e: &Entry,
) -> careplane_store::Result<Planned> {
    let rt = &e.resource_type;
    let new_id = || uuid::Uuid::new_v4().to_string();
    match (&e.action, &e.target) {
        (Action::Create, _) => {
            if let Some(condition) = &e.if_none_exist {
                match locked_matches(tx, tenant, rt, condition).await?.as_slice() {
                    [] => {}
                    [one] => return Ok(Planned::Existing(tx.read(tenant, rt, one).await?)),
                    many => return Err(StoreError::MultipleMatches { count: many.len() }),
                }
            }
            Ok(Planned::Write {
                id: new_id(),
                create: true,
            })
        }
        (_, EntryTarget::Conditional(condition)) => {
            match locked_matches(tx, tenant, rt, condition).await?.as_slice() {
                // A conditional patch has nothing to create from.
                [] if e.action == Action::Patch => Err(StoreError::NotFound {
                    resource_type: rt.to_string(),
                    id: format!("?{}", condition.criteria),
                }),
                [] => Ok(Planned::Write {
                    id: new_id(),
                    create: true,
                }),
                [one] => Ok(Planned::Write {
                    id: one.clone(),
                    create: false,
                }),
                many => Err(StoreError::MultipleMatches { count: many.len() }),
            }
        }
        (_, EntryTarget::Instance(id)) => Ok(Planned::Write {
            id: id.to_string(),
            create: false,
        }),
        _ => Ok(Planned::Write {
            id: new_id(),
            create: true,
        }),
    }
}

/// Adds the targets of conditional references in `body` to `targets`; refuses placeholders
/// that name no entry of the Bundle.
async fn resolve_references(
    state: &AppState,
    tx: &mut dyn StoreTx,
    tenant: &TenantId,
    e: &Entry,
    body: &Value,
    targets: &mut HashMap<String, String>,
    placeholders_required: bool,
) -> std::result::Result<(), Failure> {
    let mut found = BTreeSet::new();
    references::references(body, &mut found);
    for reference in found {
        if targets.contains_key(&reference) {
            continue;
        }
        if placeholders_required && references::is_placeholder(&reference) {
            return Err(Failure::api(e.locate(
                ApiError::bad_request(
                    IssueCode::NotFound,
                    format!("the reference '{reference}' names no entry of this Bundle"),
                ),
                ".resource",
            )));
        }
        if !references::is_conditional(&reference) {
            continue;
        }
        let fail = |msg: String| {
            Failure::api(e.locate(ApiError::bad_request(IssueCode::NotFound, msg), ".resource"))
        };
        let (type_name, _) = reference.split_once('?').unwrap_or_default();
        let rt = careplane_fhir::ResourceType::parse(state.defs, type_name).ok_or_else(|| {
            fail(format!(
                "'{type_name}' in '{reference}' is not a resource type"
            ))
        })?;
        let condition = crate::condition::parse_condition(state.defs, &rt, &reference)
            .map_err(|err| Failure::api(e.locate(err, ".resource")))?;
        let matches = locked_matches(tx, tenant, &rt, &condition)
            .await
            .map_err(|err| Failure::in_entry(e, err))?;
        match matches.as_slice() {
            [one] => {
                targets.insert(reference.clone(), format!("{rt}/{one}"));
            }
            other => {
                return Err(fail(format!(
                    "the conditional reference '{reference}' matches {} resources; it must match exactly one",
                    other.len()
                )))
            }
        }
    }
    Ok(())
}

async fn write(
    state: &AppState,
    tx: &mut dyn StoreTx,
    tenant: &TenantId,
    w: &Write<'_>,
    body: Value,
) -> careplane_store::Result<EntryResult> {
    let rt = &w.entry.resource_type;
    if w.create {
        let created = tx.create(tenant, rt, &w.id, body).await?;
        return Ok(EntryResult::done(StatusCode::CREATED, Some(created)));
    }
    let options = UpdateOptions {
        if_match: w.entry.if_match,
        allow_create: state.settings.allow_update_create,
    };
    let outcome = tx.update(tenant, rt, &w.id, body, options).await?;
    let status = if outcome.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(EntryResult::done(status, Some(outcome.resource)))
}

/// Applies a PATCH entry to the current version inside the transaction: `ifMatch` checked,
/// placeholders in the result rewritten, the result validated (422, as `PATCH /{type}/{id}`).
async fn apply_patch(
    state: &AppState,
    tx: &mut dyn StoreTx,
    tenant: &TenantId,
    w: &Write<'_>,
    patch: &json_patch::Patch,
    targets: &mut HashMap<String, String>,
    placeholders_required: bool,
) -> std::result::Result<EntryResult, Failure> {
    let (e, rt) = (w.entry, &w.entry.resource_type);
    let current = tx
        .read(tenant, rt, &w.id)
        .await
        .map_err(|err| Failure::in_entry(e, err))?;
    if let Some(expected) = e.if_match.filter(|v| *v != current.version) {
        let msg = format!(
            "ifMatch expects version {expected}, the current version is {}",
            current.version
        );
        return Err(Failure::at(e, "", ApiError::PreconditionFailed(msg)));
    }
    let mut doc = current.json().map_err(|err| {
        Failure::api(ApiError::Internal(format!("stored JSON unreadable: {err}")))
    })?;
    apply(&mut doc, patch).map_err(|err| Failure::at(e, ".resource", err))?;
    resolve_references(state, tx, tenant, e, &doc, targets, placeholders_required).await?;
    references::rewrite(&mut doc, targets);
    let id = careplane_fhir::Id::parse(&w.id).ok_or_else(|| {
        Failure::api(ApiError::Internal(format!(
            "stored id '{}' unparsable",
            w.id
        )))
    })?;
    check_patched(state, rt, &mut doc, &id).map_err(|err| Failure::at(e, ".resource", err))?;
    let options = UpdateOptions {
        if_match: Some(current.version),
        allow_create: false,
    };
    match tx.update(tenant, rt, &w.id, doc, options).await {
        Ok(outcome) => Ok(EntryResult::done(StatusCode::OK, Some(outcome.resource))),
        // Another writer got in between the read and the write: run the transaction again
        // (a client ifMatch that became stale is then reported by the check above).
        Err(StoreError::VersionConflict { .. }) => Err(Failure {
            error: e.locate(
                ApiError::Conflict("the resource kept changing while the patch was applied".into()),
                "",
            ),
            transient: true,
        }),
        Err(err) => Err(Failure::in_entry(e, err)),
    }
}

/// A GET entry: read, vread or a search answered with a searchset Bundle, all through the
/// transaction so they see its writes.
async fn read(
    state: &AppState,
    tx: &mut dyn StoreTx,
    tenant: &TenantId,
    e: &Entry,
    base: &str,
) -> std::result::Result<EntryResult, Failure> {
    let rt = &e.resource_type;
    let resource = match &e.target {
        EntryTarget::Instance(id) => tx.read(tenant, rt, id.as_str()).await,
        EntryTarget::Version(id, version) => {
            tx.read_version(tenant, rt, id.as_str(), *version).await
        }
        EntryTarget::Search(request) => {
            let options = search_options(state, request);
            let page = tx
                .search(tenant, request, &options)
                .await
                .map_err(|err| Failure::in_entry(e, err))?;
            let bundle = searchset(state, rt.as_str(), request, &page, base)
                .map_err(|err| Failure::at(e, "", err))?;
            return Ok(EntryResult {
                body: Some(bundle),
                ..EntryResult::done(StatusCode::OK, None)
            });
        }
        EntryTarget::Type | EntryTarget::Conditional(_) => Err(StoreError::NotFound {
            resource_type: rt.to_string(),
            id: String::new(),
        }),
    }
    .map_err(|err| Failure::in_entry(e, err))?;
    let body = resource.json().map_err(|err| {
        Failure::api(ApiError::Internal(format!("stored JSON unreadable: {err}")))
    })?;
    Ok(EntryResult {
        body: Some(body),
        ..EntryResult::done(StatusCode::OK, Some(resource))
    })
}

fn response_bundle(kind: &str, results: &[EntryResult], options: &ResponseOptions) -> Value {
    let entries: Vec<Value> = results.iter().map(|r| response_entry(r, options)).collect();
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": kind,
        "entry": entries,
    })
}

fn response_entry(result: &EntryResult, options: &ResponseOptions) -> Value {
    let mut response = Map::new();
    let reason = result.status.canonical_reason().unwrap_or_default();
    response.insert(
        "status".into(),
        json!(format!("{} {reason}", result.status.as_u16())),
    );
    let mut entry = Map::new();
    if let Some(stored) = &result.resource {
        let rt = &stored.resource_type;
        let location = format!("{rt}/{}/_history/{}", stored.id, stored.version);
        if let Some(base) = &options.base_url {
            entry.insert(
                "fullUrl".into(),
                json!(format!("{base}/{rt}/{}", stored.id)),
            );
        }
        response.insert("location".into(), json!(location));
        response.insert("etag".into(), json!(format!("W/\"{}\"", stored.version)));
        response.insert(
            "lastModified".into(),
            json!(format_instant(stored.last_updated)),
        );
        match options.return_ {
            // What a GET read is its answer, whatever Prefer says (set below).
            _ if result.body.is_some() => {}
            ReturnPreference::Representation => {
                if let Ok(body) = stored.json() {
                    entry.insert("resource".into(), body);
                }
            }
            ReturnPreference::OperationOutcome => {
                response.insert("outcome".into(), operation_outcome(&[]));
            }
            ReturnPreference::Minimal => {}
        }
    }
    if let Some(body) = &result.body {
        entry.insert("resource".into(), body.clone());
    }
    if let Some(outcome) = &result.outcome {
        response.insert("outcome".into(), outcome.clone());
    }
    entry.insert("response".into(), Value::Object(response));
    Value::Object(entry)
}
