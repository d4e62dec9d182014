//! The kill-switch hot path beside what a user would pick instead, in one criterion
//! group and one run: a bare `AtomicBool` load (the floor), `KillSwitch::is_halted`,
//! a boolean evaluation through the OpenFeature Rust SDK (`open-feature`) with an
//! in-memory provider, and LaunchDarkly's Rust server SDK (`launchdarkly-server-sdk`)
//! evaluating a real flag held locally, with no network.
//!
//! * OpenFeature: the Rust SDK (0.3) ships no in-memory provider (the Go/Java SDKs
//!   do), so [`InMemoryProvider`] below is the spec's one: a `HashMap` of flags. The
//!   figure is `Client::get_bool_value` — provider lookup, context merge, hooks,
//!   details — as an application calls it.
//! * LaunchDarkly: the 2.x SDK has no file data source. Its daemon mode reads flags
//!   from a persistent store instead of the network; [`LocalFlags`] is such a store,
//!   in memory, with the SDK's cache set to never expire, and events go to the SDK's
//!   null event processor. `bool_variation` then runs the SDK's real evaluation of a
//!   flag that is on (one fallthrough variation). Offline mode is measured too: there
//!   the SDK returns the caller's default without evaluating anything.
//!
//! cargo bench -p tradepulse-benches --bench peers -- --warm-up-time 1 --measurement-time 3

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use launchdarkly_server_sdk as ld;
use open_feature::provider::{FeatureProvider, ProviderMetadata, ResolutionDetails};
use open_feature::{
    EvaluationContext, EvaluationError, EvaluationErrorCode, EvaluationResult, OpenFeature,
    StructValue,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[path = "common/mod.rs"]
mod common;

const FLAG: &str = "trading-halted";

/// OpenFeature's in-memory provider (as in the spec and the other SDKs): flags in a map.
struct InMemoryProvider {
    metadata: ProviderMetadata,
    flags: HashMap<String, bool>,
}

fn not_found<T>() -> EvaluationResult<T> {
    Err(EvaluationError {
        code: EvaluationErrorCode::FlagNotFound,
        message: None,
    })
}

#[open_feature::async_trait]
impl FeatureProvider for InMemoryProvider {
    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }
    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        _: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        match self.flags.get(flag_key) {
            Some(v) => Ok(ResolutionDetails::new(*v)),
            None => not_found(),
        }
    }
    async fn resolve_int_value(
        &self,
        _: &str,
        _: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        not_found()
    }
    async fn resolve_float_value(
        &self,
        _: &str,
        _: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        not_found()
    }
    async fn resolve_string_value(
        &self,
        _: &str,
        _: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        not_found()
    }
    async fn resolve_struct_value(
        &self,
        _: &str,
        _: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        not_found()
    }
}

/// A LaunchDarkly persistent store in memory: what daemon mode reads flags from.
struct LocalFlags {
    flags: HashMap<String, ld::SerializedItem>,
}

impl ld::PersistentDataStore for LocalFlags {
    fn init(
        &mut self,
        all: ld::AllData<ld::SerializedItem, ld::SerializedItem>,
    ) -> Result<(), ld::PersistentStoreError> {
        self.flags = all.flags;
        Ok(())
    }
    fn flag(&self, key: &str) -> Result<Option<ld::SerializedItem>, ld::PersistentStoreError> {
        Ok(self.flags.get(key).cloned())
    }
    fn segment(&self, _: &str) -> Result<Option<ld::SerializedItem>, ld::PersistentStoreError> {
        Ok(None)
    }
    fn all_flags(&self) -> Result<HashMap<String, ld::SerializedItem>, ld::PersistentStoreError> {
        Ok(self.flags.clone())
    }
    fn upsert(
        &mut self,
        kind: ld::DataKind,
        key: &str,
        item: ld::SerializedItem,
    ) -> Result<bool, ld::PersistentStoreError> {
        if matches!(kind, ld::DataKind::Flag) {
            self.flags.insert(key.to_owned(), item);
        }
        Ok(true)
    }
    fn is_initialized(&self) -> bool {
        true
    }
}

struct LocalFlagsFactory;

impl ld::PersistentDataStoreFactory for LocalFlagsFactory {
    fn create_persistent_data_store(
        &self,
    ) -> Result<Box<dyn ld::PersistentDataStore>, std::io::Error> {
        let flag = serde_json_flag();
        let mut flags = HashMap::new();
        flags.insert(
            FLAG.to_owned(),
            ld::SerializedItem {
                version: 1,
                deleted: false,
                serialized_item: flag,
            },
        );
        Ok(Box::new(LocalFlags { flags }))
    }
}

/// A boolean flag that is on and serves `false` (trading not halted) to everyone.
fn serde_json_flag() -> String {
    format!(
        r#"{{"key":"{FLAG}","version":1,"on":true,"targets":[],"rules":[],"prerequisites":[],
            "fallthrough":{{"variation":0}},"offVariation":1,"variations":[false,true],
            "salt":"bench","trackEvents":false,"trackEventsFallthrough":false}}"#
    )
}

fn launchdarkly_local() -> ld::Client {
    let mut store = ld::PersistentDataStoreBuilder::new(Arc::new(LocalFlagsFactory));
    store.cache_forever();
    let config = ld::ConfigBuilder::new("sdk-key-unused-in-daemon-mode")
        .daemon_mode(true)
        .data_store(&store)
        .event_processor(&ld::NullEventProcessorBuilder::new())
        .build()
        .expect("LaunchDarkly config");
    ld::Client::build(config).expect("LaunchDarkly client")
}

fn launchdarkly_offline() -> ld::Client {
    let config = ld::ConfigBuilder::new("sdk-key-unused-offline")
        .offline(true)
        .build()
        .expect("LaunchDarkly config");
    ld::Client::build(config).expect("LaunchDarkly client")
}

fn hot_path_vs_peers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let switch = common::ready_memory_switch(&runtime);
    let open_feature = runtime.block_on(async {
        let mut api = OpenFeature::singleton_mut().await;
        api.set_provider(InMemoryProvider {
            metadata: ProviderMetadata::new("in-memory"),
            flags: HashMap::from([(FLAG.to_owned(), false)]),
        })
        .await;
        api.create_client()
    });
    let context = EvaluationContext::default().with_targeting_key("engine-1");
    // Sanity: every contender answers "not halted" from a real lookup.
    assert!(!runtime.block_on(async {
        open_feature
            .get_bool_value(FLAG, Some(&context), None)
            .await
            .expect("the flag exists")
    }));
    let (ld_local, ld_offline) = runtime.block_on(async {
        let local = launchdarkly_local();
        local.start_with_default_executor();
        assert_eq!(
            local.wait_for_initialization(Duration::from_secs(5)).await,
            Some(true)
        );
        let offline = launchdarkly_offline();
        offline.start_with_default_executor();
        (local, offline)
    });
    let ld_context = ld::ContextBuilder::new("engine-1")
        .build()
        .expect("LaunchDarkly context");
    let detail = ld_local.bool_variation_detail(&ld_context, FLAG, true);
    assert_eq!(
        detail.value,
        Some(false),
        "evaluated, not the default: {detail:?}"
    );

    let mut group = c.benchmark_group("hot_path_vs_peers");
    let flag = AtomicBool::new(false);
    group.bench_function("baseline: AtomicBool load", |b| {
        b.iter(|| black_box(&flag).load(Ordering::Acquire))
    });
    group.bench_function("KillSwitch::is_halted", |b| {
        b.iter(|| black_box(&switch).is_halted())
    });
    group.bench_function("OpenFeature get_bool_value (in-memory provider)", |b| {
        b.to_async(&runtime).iter(|| async {
            open_feature
                .get_bool_value(black_box(FLAG), Some(&context), None)
                .await
                .expect("the flag exists")
        })
    });
    group.bench_function(
        "LaunchDarkly bool_variation (local store, no network)",
        |b| b.iter(|| ld_local.bool_variation(black_box(&ld_context), black_box(FLAG), true)),
    );
    group.bench_function("LaunchDarkly bool_variation (offline: default)", |b| {
        b.iter(|| ld_offline.bool_variation(black_box(&ld_context), black_box(FLAG), true))
    });
    group.finish();
    ld_local.close();
    ld_offline.close();
    drop(switch);
    drop(runtime);
}

criterion_group!(benches, hot_path_vs_peers);
criterion_main!(benches);
