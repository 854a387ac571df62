//! The models the network serves, read from the providers' registrations: a provider that
//! serves a model advertises the attribute `model:<package id>` = `<task>:<name>`.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result, bail};
use cairn_client::Client;
use cairn_state::model::Provider;
use cairn_types::{Address, Amount, ContentId, WorkloadKind};
use serde::Deserialize;

/// A model and the providers serving it.
#[derive(Debug, Clone)]
pub(crate) struct ServedModel {
    pub(crate) id: ContentId,
    pub(crate) name: String,
    /// `embeddings` or `chat`.
    pub(crate) task: String,
    /// Providers and their posted inference price, cheapest first.
    pub(crate) providers: Vec<(Address, Amount)>,
    /// The serving providers' endpoints (each serves the package from its blob store).
    pub(crate) endpoints: Vec<String>,
    /// Each serving provider's endpoint.
    pub(crate) endpoint_of: BTreeMap<Address, String>,
}

impl ServedModel {
    /// The constraint a job puts on providers to reach this model.
    pub(crate) fn attribute(&self) -> (String, String) {
        (cairn_provider::daemon::model_attribute(&self.id), format!("{}:{}", self.task, self.name))
    }

    /// The cheapest posted price.
    pub(crate) fn cheapest(&self) -> Option<Amount> {
        self.providers.first().map(|p| p.1)
    }
}

#[derive(Deserialize)]
struct Providers {
    providers: Vec<Provider>,
}

/// Every model some registered provider serves, by content id.
pub(crate) async fn served_models(client: &Client) -> Result<BTreeMap<ContentId, ServedModel>> {
    let list: Providers = client.get("/api/providers").await.context("listing providers")?;
    let mut out: BTreeMap<ContentId, ServedModel> = BTreeMap::new();
    for p in list.providers {
        let Some(price) = p.info.prices.0.get(&WorkloadKind::Inference).copied() else { continue };
        for (k, v) in &p.info.attributes {
            let Some(id) = k.strip_prefix("model:").and_then(|h| h.parse::<ContentId>().ok()) else {
                continue;
            };
            let Some((task, name)) = v.split_once(':') else { continue };
            let e = out.entry(id).or_insert_with(|| ServedModel {
                id,
                name: name.to_string(),
                task: task.to_string(),
                providers: Vec::new(),
                endpoints: Vec::new(),
                endpoint_of: BTreeMap::new(),
            });
            e.endpoint_of.insert(p.owner, p.info.endpoint.clone());
            e.providers.push((p.owner, price));
            e.endpoints.push(p.info.endpoint.clone());
        }
    }
    for m in out.values_mut() {
        m.providers.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    }
    Ok(out)
}

/// Find a served model by content id or name.
pub(crate) fn find<'a>(models: &'a BTreeMap<ContentId, ServedModel>, what: &str) -> Result<&'a ServedModel> {
    if let Ok(id) = what.parse::<ContentId>() {
        return models.get(&id).with_context(|| format!("no provider on this network serves model {id}"));
    }
    let named: Vec<&ServedModel> = models.values().filter(|m| m.name == what).collect();
    match named.as_slice() {
        [one] => Ok(one),
        [] => bail!(
            "no provider on this network serves a model named {what:?} (served: {})",
            models.values().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
        ),
        _ => bail!("several served models are named {what:?}; give a content id"),
    }
}
