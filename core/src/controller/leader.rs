//! Leader election over a `coordination.k8s.io/v1` Lease in the store, so that several
//! instances of a controller can run and exactly one acts.
//!
//! It follows client-go's `leaderelection`: a candidate takes the lease when it does not exist
//! or when its holder has not renewed it for `leaseDurationSeconds` *as observed by this
//! candidate* (local time since the lease record last changed, so clocks need not agree). The
//! leader renews every `retry_period`; if it cannot renew within `renew_deadline` it stops
//! leading. Writes use the store's optimistic concurrency, so two candidates never both win.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::{Api, Store, StoreError};

/// Something that decides which one of several candidates leads.
#[async_trait]
pub trait LeaderElector: Send + Sync + 'static {
    /// This candidate's identity.
    fn identity(&self) -> &str;

    /// Becomes the leader, or stays it by renewing. `Ok(true)` when this candidate leads.
    /// Idempotent; a lost race is `Ok(false)`, not an error.
    async fn try_acquire_or_renew(&self) -> Result<bool, StoreError>;

    /// Gives leadership up so another candidate can take it at once. Does nothing when this
    /// candidate does not lead.
    async fn release(&self) -> Result<(), StoreError>;
}

/// Timing of leader election (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Copy, Debug)]
pub struct LeaseSettings {
    /// How long a lease is valid after its last renewal (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// A [`LeaderElector`] over a Lease object.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    settings: LeaseSettings,
    clock: Clock,
    /// The lease record as last seen (resourceVersion) and when it was seen to change.
    observed: Mutex<Option<(String, Instant)>>,
}

impl LeaseLock {
    /// A lock on the Lease `namespace/name` for the candidate `identity`.
    pub fn new(
        store: Arc<dyn Store>,
        namespace: &str,
        name: &str,
        identity: &str,
        settings: LeaseSettings,
        clock: Clock,
    ) -> LeaseLock {
        LeaseLock {
            api: Api::namespaced(store, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            settings,
            clock,
            observed: Mutex::new(None),
        }
    }

    fn now(&self) -> MicroTime {
        MicroTime(self.clock.now_k8s().0)
    }

    fn duration_seconds(&self) -> i32 {
        self.settings.lease_duration.as_secs().max(1) as i32
    }
}

#[async_trait]
impl LeaderElector for LeaseLock {
    fn identity(&self) -> &str {
        &self.identity
    }

    async fn try_acquire_or_renew(&self) -> Result<bool, StoreError> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            let mut lease = Lease::default();
            lease.metadata.name = Some(self.name.clone());
            lease.spec = Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(self.now()),
                renew_time: Some(self.now()),
                lease_transitions: Some(0),
                ..Default::default()
            });
            return match self.api.create(lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(true)
                }
                Err(StoreError::AlreadyExists { .. }) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let observed_at = self.observe(&current);
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(self.settings.lease_duration);
        let held_by_us = holder == self.identity;
        if !held_by_us && !holder.is_empty() && observed_at + duration > Instant::now() {
            return Ok(false);
        }
        let mut lease = current.to_owned_value();
        let mut new_spec = spec.clone();
        new_spec.holder_identity = Some(self.identity.clone());
        new_spec.lease_duration_seconds = Some(self.duration_seconds());
        new_spec.renew_time = Some(self.now());
        if !held_by_us {
            new_spec.acquire_time = Some(self.now());
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(new_spec);
        match self.api.update(lease).await {
            Ok(updated) => {
                self.observe(&updated);
                Ok(true)
            }
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) -> Result<(), StoreError> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        let mut lease = current.to_owned_value();
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(self.now()),
            ..spec
        });
        match self.api.update(lease).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl LeaseLock {
    /// Records the lease's resourceVersion; returns when this candidate first saw it.
    fn observe(&self, lease: &Lease) -> Instant {
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let mut observed = self.observed.lock().expect("lease lock");
        match &*observed {
            Some((seen, at)) if *seen == rv => *at,
            _ => {
                let now = Instant::now();
                *observed = Some((rv, now));
                now
            }
        }
    }
}

/// Runs work only while this candidate leads.
pub struct LeaderElection;

impl LeaderElection {
    /// Campaigns for leadership until `shutdown`. Each time this candidate becomes the
    /// leader, calls `lead` with a token that is cancelled when leadership is lost (renewal
    /// failed for `renew_deadline`) or on shutdown, and waits for its future to end. On
    /// shutdown, releases the lease. Returns when `shutdown` is cancelled or when a `lead`
    /// future ends by itself.
    pub async fn run<F, Fut>(
        elector: Arc<dyn LeaderElector>,
        settings: LeaseSettings,
        shutdown: CancellationToken,
        mut lead: F,
    ) where
        F: FnMut(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        loop {
            // Campaign.
            loop {
                match elector.try_acquire_or_renew().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(identity = elector.identity(), %error, "leader election: acquire failed")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(settings.retry_period) => {}
                }
            }
            tracing::info!(identity = elector.identity(), "became leader");
            let leading = shutdown.child_token();
            let mut work = tokio::spawn(lead(leading.clone()));
            let mut last_renew = Instant::now();
            let finished_by_itself = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break false,
                    _ = &mut work => break true,
                    _ = tokio::time::sleep(settings.retry_period) => {}
                }
                let left = settings.renew_deadline.saturating_sub(last_renew.elapsed());
                match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
                    Ok(Ok(true)) => last_renew = Instant::now(),
                    Ok(Ok(false)) => {
                        tracing::warn!(
                            identity = elector.identity(),
                            "leader election: lease taken by another candidate"
                        );
                        break false;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(identity = elector.identity(), %error, "leader election: renew failed")
                    }
                    Err(_) => {}
                }
                if last_renew.elapsed() >= settings.renew_deadline {
                    tracing::warn!(
                        identity = elector.identity(),
                        "leader election: renew deadline passed"
                    );
                    break false;
                }
            };
            leading.cancel();
            if !finished_by_itself {
                let _ = work.await;
            }
            if shutdown.is_cancelled() || finished_by_itself {
                if let Err(error) = elector.release().await {
                    tracing::warn!(identity = elector.identity(), %error, "leader election: release failed");
                }
                return;
            }
            tracing::info!(identity = elector.identity(), "stopped leading");
        }
    }
}
