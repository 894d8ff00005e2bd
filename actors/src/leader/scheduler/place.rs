//! Placement (SPEC §7) as a pure function over a snapshot: filter the nodes, score
//! the ones left, pick the best; or say why nothing fits.
//!
//! Filters, in order (a node is counted under the first it fails): Ready, not
//! cordoned, `nodeSelector`, `NO_SCHEDULE` taints tolerated, free cpu, free memory, a
//! free GPU of the driver and VRAM asked for. Among the nodes left the order is:
//! fewest untolerated `PREFER_NO_SCHEDULE` taints, then fewest instances of the same
//! workload (spreading before packing), then "most empty" (highest mean remaining
//! fraction of cpu and memory after placement), then node name — so the result is
//! the same for the same snapshot.
//!
//! Within one snapshot (one scheduling round) the nodes a demand may go to are kept
//! per constraint signature (selector, tolerations, cpu and memory requests): many
//! small workloads of the same shape then share one ordered candidate set, kept up
//! to date from a log of the nodes whose usage changed, instead of each paying a pass
//! over every node. The results are those of [`Snapshot::place`], one at a time.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;

use kat_proto::v1alpha1::{Gpu, GpuDriver, TaintEffect, Toleration, TolerationOperator};

/// A taint as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTaint {
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

impl NodeTaint {
    fn describe(&self) -> String {
        let effect = match self.effect {
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            _ => "NoSchedule",
        };
        if self.value.is_empty() {
            format!("taint {}:{effect}", self.key)
        } else {
            format!("taint {}={}:{effect}", self.key, self.value)
        }
    }
}

/// A node as the scheduler sees it, with what is already placed on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub ready: bool,
    /// NotReady during a disruption (`node_monitor::DISRUPTED`): gets nothing new, but
    /// keeps what it has.
    pub held: bool,
    pub unschedulable: bool,
    /// Being drained: its instances are moved away.
    pub draining: bool,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<NodeTaint>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub gpus: Vec<Gpu>,
    /// Sums of the requests of instances placed here.
    pub used_cpu_millis: i64,
    pub used_memory_bytes: i64,
    /// GPU indexes given to instances here.
    pub used_gpus: BTreeSet<u32>,
    /// Instances here, by workload key (`ns/name`).
    pub per_workload: HashMap<String, u32>,
}

/// A GPU an instance asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuNeed {
    pub driver: GpuDriver,
    pub min_vram_mb: u32,
}

/// What one instance asks of its node.
#[derive(Debug, Clone, Default)]
pub struct Demand {
    /// `ns/name`: instances of the same workload are spread.
    pub workload: String,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub gpu: Option<GpuNeed>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

/// Where an instance went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node: String,
    /// The GPU given to it, by device index.
    pub gpu: Option<u32>,
}

/// Why an instance fits nowhere, e.g. "0/3 nodes: 2 insufficient memory, 1 taint
/// gpu:NoSchedule".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable(pub String);

impl std::fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `tol` tolerates `taint`.
pub fn tolerates(tol: &Toleration, taint: &NodeTaint) -> bool {
    let effect_matches = tol.effect() == TaintEffect::Unspecified || tol.effect() == taint.effect;
    let key_matches = match tol.operator() {
        // An empty key with EXISTS tolerates every taint.
        TolerationOperator::Exists => tol.key.is_empty() || tol.key == taint.key,
        TolerationOperator::Equal | TolerationOperator::Unspecified => {
            tol.key == taint.key && tol.value == taint.value
        }
    };
    effect_matches && key_matches
}

fn tolerated(tolerations: &[Toleration], taint: &NodeTaint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

fn gpu_matches(gpu: &Gpu, need: GpuNeed) -> bool {
    let driver = match need.driver {
        GpuDriver::Unspecified | GpuDriver::Any => true,
        d => gpu.driver() == d,
    };
    driver && gpu.vram_mb >= need.min_vram_mb
}

impl NodeInfo {
    /// The first filter this node fails for `d`, or the GPU it would give (if any).
    fn check(&self, d: &Demand) -> Result<Option<u32>, Cow<'static, str>> {
        self.check_placement(d)?;
        self.check_room(d)
    }

    /// The filters that placements do not change: ready, not cordoned, selector,
    /// `NO_SCHEDULE` taints.
    fn check_placement(&self, d: &Demand) -> Result<(), Cow<'static, str>> {
        if !self.ready {
            return Err(Cow::Borrowed("not ready"));
        }
        if self.unschedulable {
            return Err(Cow::Borrowed("cordoned"));
        }
        if d.node_selector
            .iter()
            .any(|(k, v)| self.labels.get(k) != Some(v))
        {
            return Err(Cow::Borrowed("node selector mismatch"));
        }
        if let Some(t) = self
            .taints
            .iter()
            .find(|t| t.effect != TaintEffect::PreferNoSchedule && !tolerated(&d.tolerations, t))
        {
            return Err(Cow::Owned(t.describe()));
        }
        Ok(())
    }

    /// The filters on what is left: cpu, memory, a matching free GPU (which it gives).
    fn check_room(&self, d: &Demand) -> Result<Option<u32>, Cow<'static, str>> {
        if d.cpu_millis > 0
            && self
                .used_cpu_millis
                .checked_add(d.cpu_millis)
                .is_none_or(|sum| sum > self.cpu_millis)
        {
            return Err(Cow::Borrowed("insufficient cpu"));
        }
        if d.memory_bytes > 0
            && self
                .used_memory_bytes
                .checked_add(d.memory_bytes)
                .is_none_or(|sum| sum > self.memory_bytes)
        {
            return Err(Cow::Borrowed("insufficient memory"));
        }
        match d.gpu {
            None => Ok(None),
            // The smallest GPU that does, leaving big ones for big asks.
            Some(need) => self
                .free_gpu(need)
                .map(Some)
                .ok_or(Cow::Borrowed("no free GPU matching the request")),
        }
    }

    /// Instances of `d`'s workload here.
    fn same_workload(&self, d: &Demand) -> u32 {
        if self.per_workload.is_empty() {
            0
        } else {
            self.per_workload.get(&d.workload).copied().unwrap_or(0)
        }
    }

    fn untolerated_preferences(&self, d: &Demand) -> usize {
        self.taints
            .iter()
            .filter(|t| t.effect == TaintEffect::PreferNoSchedule && !tolerated(&d.tolerations, t))
            .count()
    }

    /// Mean remaining fraction of cpu and memory after placing `d`, in millionths.
    fn emptiness_after(&self, d: &Demand) -> i64 {
        let left = |total: i64, used: i64, more: i64| -> i64 {
            if total <= 0 {
                0
            } else {
                i64::try_from(
                    i128::from(total.saturating_sub(used).saturating_sub(more).max(0)) * 1_000_000
                        / i128::from(total),
                )
                .unwrap_or(i64::MAX)
            }
        };
        (left(self.cpu_millis, self.used_cpu_millis, d.cpu_millis)
            + left(self.memory_bytes, self.used_memory_bytes, d.memory_bytes))
            / 2
    }

    /// The free GPU placing `d` here would take (the smallest that fits).
    fn free_gpu(&self, need: GpuNeed) -> Option<u32> {
        self.gpus
            .iter()
            .filter(|g| !self.used_gpus.contains(&g.index) && gpu_matches(g, need))
            .min_by_key(|g| (g.vram_mb, g.index))
            .map(|g| g.index)
    }

    /// Records an instance placed here. `gpu: None` for a demand that asks for one
    /// (an instance placed in an earlier round: which card it got is not kept) takes
    /// the card placing it now would take, so GPUs in use stay counted.
    pub fn add(&mut self, d: &Demand, gpu: Option<u32>) {
        self.used_cpu_millis = self.used_cpu_millis.saturating_add(d.cpu_millis);
        self.used_memory_bytes = self.used_memory_bytes.saturating_add(d.memory_bytes);
        if let Some(g) = gpu.or_else(|| d.gpu.and_then(|need| self.free_gpu(need))) {
            self.used_gpus.insert(g);
        }
        // No new key (an allocation) for a workload already counted here.
        match self.per_workload.get_mut(&d.workload) {
            Some(n) => *n += 1,
            None => {
                self.per_workload.insert(d.workload.clone(), 1);
            }
        }
    }

    /// Records an instance removed from here.
    pub fn remove(&mut self, d: &Demand, gpu: Option<u32>) {
        self.used_cpu_millis = self.used_cpu_millis.saturating_sub(d.cpu_millis);
        self.used_memory_bytes = self.used_memory_bytes.saturating_sub(d.memory_bytes);
        // Without its card's index ([`NodeInfo::add`]): one card in use that fits.
        let gpu = gpu.or_else(|| {
            let need = d.gpu?;
            self.gpus
                .iter()
                .filter(|g| self.used_gpus.contains(&g.index) && gpu_matches(g, need))
                .min_by_key(|g| (g.vram_mb, g.index))
                .map(|g| g.index)
        });
        if let Some(g) = gpu {
            self.used_gpus.remove(&g);
        }
        if let Some(n) = self.per_workload.get_mut(&d.workload) {
            *n = n.saturating_sub(1);
        }
    }
}

/// How a candidate node ranks for a demand, best first: untolerated
/// `PREFER_NO_SCHEDULE` taints, instances of the same workload, emptiness after
/// placement (negated), then its index (nodes are sorted by name).
type Rank = (usize, u32, i64, usize);

fn rank(n: &NodeInfo, i: usize, d: &Demand) -> Rank {
    (
        n.untolerated_preferences(d),
        n.same_workload(d),
        -n.emptiness_after(d),
        i,
    )
}

/// Everything of a demand that decides where it may go and how nodes rank for it,
/// except its workload; demands with equal signatures share one [`Eligible`] set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Signature {
    node_selector: Vec<(String, String)>,
    /// (key, operator, value, effect) of each toleration.
    tolerations: Vec<(String, i32, String, i32)>,
    cpu_millis: i64,
    memory_bytes: i64,
}

impl Signature {
    /// `None` for a demand that asks for a GPU: which GPUs are free is not kept in
    /// the sets (such demands are rare and scan the nodes).
    fn of(d: &Demand) -> Option<Self> {
        if d.gpu.is_some() {
            return None;
        }
        Some(Self {
            node_selector: d
                .node_selector
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            tolerations: d
                .tolerations
                .iter()
                .map(|t| (t.key.clone(), t.operator, t.value.clone(), t.effect))
                .collect(),
            cpu_millis: d.cpu_millis,
            memory_bytes: d.memory_bytes,
        })
    }
}

/// The nodes demands of one signature fit on now, ordered as [`rank`] orders them
/// for a workload with no instances yet.
#[derive(Debug, Clone)]
struct Eligible {
    /// Whether each node passes the filters that placements do not change.
    placeable: Vec<bool>,
    /// Each node's entry in `order` (preferences, negated emptiness), if it has room.
    entry: Vec<Option<(usize, i64)>>,
    order: BTreeSet<(usize, i64, usize)>,
    /// How much of the snapshot's change log is reflected here.
    synced: usize,
}

impl Eligible {
    fn new(nodes: &[NodeInfo], d: &Demand, synced: usize) -> Self {
        let mut eligible = Self {
            placeable: nodes.iter().map(|n| n.check_placement(d).is_ok()).collect(),
            entry: vec![None; nodes.len()],
            order: BTreeSet::new(),
            synced,
        };
        for (i, n) in nodes.iter().enumerate() {
            eligible.refresh(n, i, d);
        }
        eligible
    }

    /// Puts node `i` where it ranks now, or takes it out if it has no room left.
    fn refresh(&mut self, n: &NodeInfo, i: usize, d: &Demand) {
        if !self.placeable[i] {
            return;
        }
        let now = n
            .check_room(d)
            .is_ok()
            .then(|| (n.untolerated_preferences(d), -n.emptiness_after(d)));
        if self.entry[i] == now {
            return;
        }
        if let Some((prefer, empty)) = self.entry[i] {
            self.order.remove(&(prefer, empty, i));
        }
        if let Some((prefer, empty)) = now {
            self.order.insert((prefer, empty, i));
        }
        self.entry[i] = now;
    }
}

/// Signatures a snapshot keeps eligible sets for, at most (each costs a few words per
/// node); demands of further signatures scan the nodes.
const MAX_SIGNATURES: usize = 32;

/// Demands of fewer instances than a snapshot's nodes divided by this use kept sets
/// (from `kat-bench placement`: a kept placement, its share of keeping the sets
/// included, costs about what checking and ranking 30 to 40 nodes does).
const NODES_PER_KEPT_PLACEMENT: usize = 32;

/// The nodes placements are made on, with what each already has.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
    /// By workload key, the nodes that have had instances of it in this snapshot (a
    /// superset of where it has them now).
    hosting: HashMap<String, Vec<usize>>,
    /// Indexes of the nodes whose usage changed, in order.
    changed: Vec<usize>,
    eligible: HashMap<Signature, Eligible>,
    /// Signatures seen once: a set is made from a signature's second demand on.
    seen: HashSet<Signature>,
}

/// "0/3 nodes: 2 insufficient memory, 1 cordoned": counts, most frequent first.
fn summarize(total: usize, reasons: &BTreeMap<Cow<'static, str>, usize>) -> Unschedulable {
    if total == 0 {
        return Unschedulable("0/0 nodes: no nodes in the cluster".to_owned());
    }
    let mut counted: Vec<(&Cow<'static, str>, &usize)> = reasons.iter().collect();
    counted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let parts: Vec<String> = counted
        .into_iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    Unschedulable(format!("0/{total} nodes: {}", parts.join(", ")))
}

impl Snapshot {
    pub fn new(mut nodes: Vec<NodeInfo>) -> Self {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let mut hosting: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for (workload, &count) in &n.per_workload {
                if count > 0 {
                    hosting.entry(workload.clone()).or_default().push(i);
                }
            }
        }
        Self {
            nodes,
            index,
            hosting,
            ..Default::default()
        }
    }

    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.nodes[i])
    }

    /// Records an instance of `d` on `node` (one placed earlier, or kept there).
    pub fn add(&mut self, node: &str, d: &Demand, gpu: Option<u32>) {
        if let Some(&i) = self.index.get(node) {
            self.add_at(i, d, gpu);
        }
    }

    /// Records an instance of `d` removed from `node`.
    pub fn remove(&mut self, node: &str, d: &Demand, gpu: Option<u32>) {
        if let Some(&i) = self.index.get(node) {
            self.nodes[i].remove(d, gpu);
            self.changed.push(i);
        }
    }

    fn add_at(&mut self, i: usize, d: &Demand, gpu: Option<u32>) {
        let node = &mut self.nodes[i];
        let first = node.same_workload(d) == 0;
        node.add(d, gpu);
        if first {
            match self.hosting.get_mut(&d.workload) {
                Some(hosts) => hosts.push(i),
                None => {
                    self.hosting.insert(d.workload.clone(), vec![i]);
                }
            }
        }
        self.changed.push(i);
    }

    /// Why `d` fits nowhere now: every node under the first filter it fails.
    fn unschedulable(&self, d: &Demand) -> Unschedulable {
        let mut reasons: BTreeMap<Cow<'static, str>, usize> = BTreeMap::new();
        for node in &self.nodes {
            if let Err(reason) = node.check(d) {
                *reasons.entry(reason).or_default() += 1;
            }
        }
        summarize(self.nodes.len(), &reasons)
    }

    /// Places one instance and records it on the chosen node. The reference for the
    /// others: one pass over every node.
    pub fn place(&mut self, d: &Demand) -> Result<Placement, Unschedulable> {
        let mut best: Option<(usize, usize, u32, i64, Option<u32>)> = None;
        let mut reasons: BTreeMap<Cow<'static, str>, usize> = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            match node.check(d) {
                Err(reason) => *reasons.entry(reason).or_default() += 1,
                Ok(gpu) => {
                    let prefer = node.untolerated_preferences(d);
                    let same = node.per_workload.get(&d.workload).copied().unwrap_or(0);
                    let empty = node.emptiness_after(d);
                    // Nodes come sorted by name: the first of equals wins.
                    let better = best
                        .as_ref()
                        .is_none_or(|&(_, bp, bs, be, _)| (prefer, same, -empty) < (bp, bs, -be));
                    if better {
                        best = Some((i, prefer, same, empty, gpu));
                    }
                }
            }
        }
        let Some((i, _, _, _, gpu)) = best else {
            return Err(summarize(self.nodes.len(), &reasons));
        };
        self.add_at(i, d, gpu);
        Ok(Placement {
            node: self.nodes[i].name.clone(),
            gpu,
        })
    }

    /// Places `count` instances of the same demand, as `count` calls of [`place`]
    /// would (same choices, same order). From the second demand of a signature on
    /// (see the module docs) in O(changes since its last demand + nodes hosting the
    /// workload + count) · log nodes; otherwise in O(nodes + count · log nodes).
    ///
    /// [`place`]: Snapshot::place
    pub fn place_many(
        &mut self,
        d: &Demand,
        count: usize,
    ) -> Vec<Result<Placement, Unschedulable>> {
        if count == 0 {
            return Vec::new();
        }
        // A pass over the nodes costs about as much as a placement from a kept set
        // per NODES_PER_KEPT_PLACEMENT nodes: big demands on small snapshots scan.
        if self.nodes.len() >= NODES_PER_KEPT_PLACEMENT.saturating_mul(count)
            && let Some(signature) = Signature::of(d)
            && self.keeps(&signature, d)
        {
            return self.place_many_kept(d, count, signature);
        }
        self.place_many_scanning(d, count)
    }

    /// Whether an eligible set is kept for `signature` (made here at its second demand).
    fn keeps(&mut self, signature: &Signature, d: &Demand) -> bool {
        if self.eligible.contains_key(signature) {
            return true;
        }
        if self.eligible.len() >= MAX_SIGNATURES || self.seen.insert(signature.clone()) {
            return false;
        }
        let eligible = Eligible::new(&self.nodes, d, self.changed.len());
        self.eligible.insert(signature.clone(), eligible);
        true
    }

    /// [`place_many`](Snapshot::place_many) over the kept set of `d`'s signature.
    fn place_many_kept(
        &mut self,
        d: &Demand,
        count: usize,
        signature: Signature,
    ) -> Vec<Result<Placement, Unschedulable>> {
        let Some(mut kept) = self.eligible.remove(&signature) else {
            return self.place_many_scanning(d, count);
        };
        for &i in &self.changed[kept.synced..] {
            kept.refresh(&self.nodes[i], i, d);
        }
        // This call's own changes come after this point in the log: the signature's
        // next demand takes them in.
        kept.synced = self.changed.len();
        // Nodes with instances of this workload rank differently from what the kept
        // set says: they are ranked here, and passed over in the kept order. Only
        // they change below, so the rest of the kept set stays true meanwhile.
        let mut own: HashSet<usize> = self
            .hosting
            .get(&d.workload)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&i| self.nodes[i].same_workload(d) > 0)
            .collect();
        let mut own_ranked: BTreeSet<Rank> = own
            .iter()
            .filter(|&&i| self.nodes[i].check(d).is_ok())
            .map(|&i| rank(&self.nodes[i], i, d))
            .collect();
        // Everything in the kept order up to here belongs to `own` nodes.
        let mut passed = Bound::Unbounded;
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let shared = loop {
                match kept.order.range((passed, Bound::Unbounded)).next().copied() {
                    Some(entry) if own.contains(&entry.2) => passed = Bound::Excluded(entry),
                    other => break other,
                }
            };
            let best = match (
                own_ranked.first().copied(),
                shared.map(|(prefer, empty, i)| (prefer, 0, empty, i)),
            ) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(best) = best else {
                // Nothing fits any more, and nothing changes until the next demand.
                let why = self.unschedulable(d);
                out.resize(count, Err(why));
                break;
            };
            let i = best.3;
            own_ranked.remove(&best);
            own.insert(i);
            // Kept sets are for demands without a GPU.
            self.add_at(i, d, None);
            let node = &self.nodes[i];
            if node.check(d).is_ok() {
                own_ranked.insert(rank(node, i, d));
            }
            out.push(Ok(Placement {
                node: node.name.clone(),
                gpu: None,
            }));
        }
        self.eligible.insert(signature, kept);
        out
    }

    /// [`place_many`](Snapshot::place_many) by one pass over every node: the filters
    /// that do not change are checked once, and the candidates are kept ordered.
    fn place_many_scanning(
        &mut self,
        d: &Demand,
        count: usize,
    ) -> Vec<Result<Placement, Unschedulable>> {
        let mut reasons: BTreeMap<Cow<'static, str>, usize> = BTreeMap::new();
        let mut keyed = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            match node.check(d) {
                Ok(_) => keyed.push(rank(node, i, d)),
                Err(reason) => *reasons.entry(reason).or_default() += 1,
            }
        }
        // Only the best few can be chosen: order those, keep the rest aside. While one
        // of the few has not been chosen yet, the best of the ordered ones is the best
        // of all (a chosen node only gets worse); after that the rest joins in.
        let few = (2 * count + 8).min(keyed.len());
        if few > 0 && few < keyed.len() {
            keyed.select_nth_unstable(few - 1);
        }
        let mut rest = keyed.split_off(few);
        let mut unchosen = keyed.len();
        let mut candidates: BTreeSet<_> = keyed.into_iter().collect();
        let mut chosen = HashSet::new();
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let placed = loop {
                if unchosen == 0 && !rest.is_empty() {
                    candidates.extend(rest.drain(..));
                    unchosen = usize::MAX;
                }
                let Some(best) = candidates.pop_first() else {
                    break None;
                };
                let i = best.3;
                if chosen.insert(i) {
                    unchosen = unchosen.saturating_sub(1);
                }
                // Only this call's own placements change a candidate: check it again.
                match self.nodes[i].check(d) {
                    Ok(gpu) => {
                        self.add_at(i, d, gpu);
                        let node = &self.nodes[i];
                        candidates.insert(rank(node, i, d));
                        break Some(Placement {
                            node: node.name.clone(),
                            gpu,
                        });
                    }
                    Err(reason) => *reasons.entry(reason).or_default() += 1,
                }
            };
            out.push(placed.ok_or_else(|| summarize(self.nodes.len(), &reasons)));
        }
        out
    }

    /// For a DAEMON_SERVICE: whether `node` should run one (it passes the filters that
    /// say where the workload belongs: ready, not cordoned, selector, taints), and if
    /// so whether it fits there now.
    pub fn daemon_fit(&self, node: &str, d: &Demand) -> DaemonFit {
        let Some(n) = self.node(node) else {
            return DaemonFit::NotEligible;
        };
        match n.check(d) {
            Ok(gpu) => DaemonFit::Fits(gpu),
            Err(reason)
                if reason.starts_with("insufficient") || reason.starts_with("no free GPU") =>
            {
                DaemonFit::NoRoom(Unschedulable(format!("0/1 nodes: 1 {reason}")))
            }
            Err(_) => DaemonFit::NotEligible,
        }
    }
}

/// What [`Snapshot::daemon_fit`] says of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonFit {
    Fits(Option<u32>),
    /// It belongs there but there is no room now (no instance; a FailedScheduling event).
    NoRoom(Unschedulable),
    NotEligible,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GI: i64 = 1 << 30;

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            ready: true,
            cpu_millis: 4000,
            memory_bytes: 8 * GI,
            ..Default::default()
        }
    }

    fn demand(workload: &str) -> Demand {
        Demand {
            workload: workload.into(),
            cpu_millis: 100,
            memory_bytes: 64 << 20,
            ..Default::default()
        }
    }

    fn taint(key: &str, value: &str, effect: TaintEffect) -> NodeTaint {
        NodeTaint {
            key: key.into(),
            value: value.into(),
            effect,
        }
    }

    fn toleration(
        key: &str,
        op: TolerationOperator,
        value: &str,
        effect: TaintEffect,
    ) -> Toleration {
        Toleration {
            key: key.into(),
            operator: op.into(),
            value: value.into(),
            effect: effect.into(),
        }
    }

    fn place(s: &mut Snapshot, d: &Demand) -> String {
        s.place(d).unwrap().node
    }

    #[test]
    fn replicas_spread_over_nodes_before_packing() {
        let mut s = Snapshot::new(vec![node("c"), node("a"), node("b")]);
        let d = demand("default/web");
        let mut placed: Vec<String> = (0..3).map(|_| place(&mut s, &d)).collect();
        placed.sort();
        assert_eq!(placed, ["a", "b", "c"]);
        // The fourth goes to the emptiest; all equal: the first by name.
        assert_eq!(place(&mut s, &d), "a");
    }

    #[test]
    fn extreme_numbers_are_refused_not_overflowed() {
        // A record that slipped past validation (or a node claiming the maximum):
        // no overflow, no panic, no placement where it does not fit.
        let mut full = node("a");
        full.cpu_millis = i64::MAX;
        full.memory_bytes = i64::MAX;
        full.used_cpu_millis = i64::MAX - 1;
        let mut huge = demand("ns/w");
        huge.cpu_millis = i64::MAX;
        huge.memory_bytes = i64::MAX;
        let mut s = Snapshot::new(vec![full, node("b")]);
        assert!(s.place(&huge).is_err());
        let mut s = Snapshot::new(vec![node("b")]);
        assert!(s.place(&huge).is_err());
        let mut roomy = node("c");
        roomy.cpu_millis = i64::MAX;
        roomy.memory_bytes = i64::MAX;
        let mut s = Snapshot::new(vec![roomy]);
        assert_eq!(place(&mut s, &huge), "c");
        assert!(
            s.place(&huge).is_err(),
            "full now, and the sum did not wrap"
        );
    }

    #[test]
    fn ties_are_broken_by_node_name_whatever_the_input_order() {
        for order in [["x", "y", "z"], ["z", "y", "x"], ["y", "z", "x"]] {
            let mut s = Snapshot::new(order.iter().map(|n| node(n)).collect());
            assert_eq!(place(&mut s, &demand("ns/w")), "x");
        }
    }

    #[test]
    fn the_emptiest_node_wins() {
        let mut busy = node("a");
        busy.used_cpu_millis = 3000;
        busy.used_memory_bytes = 6 * GI;
        let mut s = Snapshot::new(vec![busy, node("b")]);
        assert_eq!(place(&mut s, &demand("ns/w")), "b");
        // A bigger node is emptier after placement than a small one.
        let mut small = node("a");
        small.cpu_millis = 1000;
        small.memory_bytes = GI;
        let mut s = Snapshot::new(vec![small, node("b")]);
        assert_eq!(place(&mut s, &demand("ns/other")), "b");
    }

    #[test]
    fn other_workloads_do_not_count_for_spreading() {
        let mut a = node("a");
        a.per_workload.insert("ns/other".into(), 5);
        let mut b = node("b");
        b.per_workload.insert("ns/w".into(), 1);
        let mut s = Snapshot::new(vec![a, b]);
        assert_eq!(place(&mut s, &demand("ns/w")), "a");
    }

    #[test]
    fn not_ready_and_cordoned_nodes_get_nothing() {
        let mut down = node("a");
        down.ready = false;
        let mut cordoned = node("b");
        cordoned.unschedulable = true;
        let mut s = Snapshot::new(vec![down, cordoned, node("c")]);
        assert_eq!(place(&mut s, &demand("ns/w")), "c");
        let mut s = Snapshot::new(vec![
            {
                let mut n = node("a");
                n.ready = false;
                n
            },
            {
                let mut n = node("b");
                n.unschedulable = true;
                n
            },
        ]);
        assert_eq!(
            s.place(&demand("ns/w")).unwrap_err().0,
            "0/2 nodes: 1 cordoned, 1 not ready"
        );
    }

    #[test]
    fn the_node_selector_must_match_every_label() {
        let mut ssd = node("a");
        ssd.labels.insert("disktype".into(), "ssd".into());
        ssd.labels.insert("zone".into(), "1".into());
        let mut hdd = node("b");
        hdd.labels.insert("disktype".into(), "hdd".into());
        let mut s = Snapshot::new(vec![ssd, hdd, node("c")]);
        let mut d = demand("ns/w");
        d.node_selector.insert("disktype".into(), "ssd".into());
        assert_eq!(place(&mut s, &d), "a");
        d.node_selector.insert("zone".into(), "2".into());
        assert_eq!(
            s.place(&d).unwrap_err().0,
            "0/3 nodes: 3 node selector mismatch"
        );
    }

    #[test]
    fn no_schedule_taints_need_a_toleration() {
        let mut gpu = node("a");
        gpu.taints.push(taint("gpu", "", TaintEffect::NoSchedule));
        let mut s = Snapshot::new(vec![gpu]);
        assert_eq!(
            s.place(&demand("ns/w")).unwrap_err().0,
            "0/1 nodes: 1 taint gpu:NoSchedule"
        );
        let mut d = demand("ns/w");
        d.tolerations.push(toleration(
            "gpu",
            TolerationOperator::Exists,
            "",
            TaintEffect::NoSchedule,
        ));
        assert_eq!(place(&mut s, &d), "a");
    }

    #[test]
    fn tolerations_match_by_key_value_operator_and_effect() {
        let t = taint("team", "blue", TaintEffect::NoSchedule);
        let exists = |key: &str, effect| toleration(key, TolerationOperator::Exists, "", effect);
        let equal = |key: &str, value: &str, effect| {
            toleration(key, TolerationOperator::Equal, value, effect)
        };
        assert!(tolerates(&exists("team", TaintEffect::NoSchedule), &t));
        assert!(
            tolerates(&exists("team", TaintEffect::Unspecified), &t),
            "any effect"
        );
        assert!(
            tolerates(&exists("", TaintEffect::Unspecified), &t),
            "empty key: every taint"
        );
        assert!(!tolerates(&exists("other", TaintEffect::NoSchedule), &t));
        assert!(
            !tolerates(&exists("team", TaintEffect::PreferNoSchedule), &t),
            "other effect"
        );
        assert!(tolerates(
            &equal("team", "blue", TaintEffect::NoSchedule),
            &t
        ));
        assert!(!tolerates(
            &equal("team", "red", TaintEffect::NoSchedule),
            &t
        ));
        assert!(!tolerates(&equal("", "blue", TaintEffect::NoSchedule), &t));
        let unspecified = toleration(
            "team",
            TolerationOperator::Unspecified,
            "blue",
            TaintEffect::Unspecified,
        );
        assert!(tolerates(&unspecified, &t), "unspecified operator is EQUAL");
    }

    #[test]
    fn prefer_no_schedule_only_lowers_the_preference() {
        let mut soft = node("a");
        soft.taints
            .push(taint("spot", "", TaintEffect::PreferNoSchedule));
        let mut busy = node("b");
        busy.used_cpu_millis = 3900;
        busy.used_memory_bytes = 7 * GI;
        let mut s = Snapshot::new(vec![soft.clone(), busy]);
        // The untainted node is chosen though it is fuller.
        assert_eq!(place(&mut s, &demand("ns/w")), "b");
        // The tainted node is still used when nothing else fits.
        let mut s = Snapshot::new(vec![soft.clone()]);
        assert_eq!(place(&mut s, &demand("ns/w")), "a");
        // Tolerated: no longer avoided.
        let mut s = Snapshot::new(vec![soft, node("b")]);
        let mut d = demand("ns/w");
        d.tolerations.push(toleration(
            "spot",
            TolerationOperator::Exists,
            "",
            TaintEffect::PreferNoSchedule,
        ));
        assert_eq!(place(&mut s, &d), "a");
    }

    #[test]
    fn cpu_and_memory_requests_must_fit_in_what_is_left() {
        let mut s = Snapshot::new(vec![node("a")]);
        let mut d = demand("ns/w");
        d.cpu_millis = 1500;
        d.memory_bytes = GI;
        assert_eq!(place(&mut s, &d), "a");
        assert_eq!(place(&mut s, &d), "a");
        // 3000 of 4000 millicores used: a third does not fit.
        assert_eq!(s.place(&d).unwrap_err().0, "0/1 nodes: 1 insufficient cpu");
        let mut d = demand("ns/m");
        d.memory_bytes = 7 * GI;
        assert_eq!(
            s.place(&d).unwrap_err().0,
            "0/1 nodes: 1 insufficient memory"
        );
        // Removing an instance frees its share.
        let mut big = demand("ns/w");
        big.cpu_millis = 1500;
        big.memory_bytes = GI;
        s.remove("a", &big, None);
        assert_eq!(place(&mut s, &big), "a");
    }

    #[test]
    fn gpus_match_driver_and_vram_and_are_given_once() {
        let gpu = |index, driver: GpuDriver, vram_mb| Gpu {
            driver: driver.into(),
            model: String::new(),
            vram_mb,
            index,
        };
        let mut a = node("a");
        a.gpus = vec![
            gpu(0, GpuDriver::Nvidia, 24_000),
            gpu(1, GpuDriver::Nvidia, 8_000),
        ];
        let mut b = node("b");
        b.gpus = vec![gpu(0, GpuDriver::Amd, 16_000)];
        let mut s = Snapshot::new(vec![a, b, node("c")]);
        let mut d = demand("ns/ml");
        d.gpu = Some(GpuNeed {
            driver: GpuDriver::Nvidia,
            min_vram_mb: 4_000,
        });
        // The smallest GPU that fits is given first.
        assert_eq!(
            s.place(&d).unwrap(),
            Placement {
                node: "a".into(),
                gpu: Some(1)
            }
        );
        assert_eq!(s.place(&d).unwrap().gpu, Some(0));
        assert_eq!(
            s.place(&d).unwrap_err().0,
            "0/3 nodes: 3 no free GPU matching the request"
        );
        let mut any = demand("ns/any");
        any.gpu = Some(GpuNeed {
            driver: GpuDriver::Any,
            min_vram_mb: 16_000,
        });
        assert_eq!(s.place(&any).unwrap().node, "b");
        let mut huge = demand("ns/huge");
        huge.gpu = Some(GpuNeed {
            driver: GpuDriver::Amd,
            min_vram_mb: 32_000,
        });
        assert!(s.place(&huge).is_err());
    }

    #[test]
    fn gpus_of_instances_placed_in_earlier_rounds_stay_taken() {
        let mut a = node("a");
        a.gpus = vec![Gpu {
            driver: GpuDriver::Nvidia.into(),
            model: String::new(),
            vram_mb: 24_000,
            index: 0,
        }];
        let mut d = demand("ns/ml");
        d.gpu = Some(GpuNeed {
            driver: GpuDriver::Nvidia,
            min_vram_mb: 0,
        });
        // A later round rebuilds the snapshot: the instance placed before is added
        // without its card's index, and still holds the one card.
        let mut s = Snapshot::new(vec![a]);
        s.add("a", &d, None);
        assert_eq!(
            s.place(&d).unwrap_err().0,
            "0/1 nodes: 1 no free GPU matching the request"
        );
        // Removed (without the index either), the card is free again.
        s.remove("a", &d, None);
        assert_eq!(s.place(&d).unwrap().gpu, Some(0));
    }

    #[test]
    fn pending_reasons_count_each_node_under_its_first_failed_filter() {
        let mut down = node("a");
        down.ready = false;
        down.taints.push(taint("gpu", "", TaintEffect::NoSchedule));
        let mut tainted = node("b");
        tainted
            .taints
            .push(taint("gpu", "", TaintEffect::NoSchedule));
        let mut full1 = node("c");
        full1.used_memory_bytes = 8 * GI;
        let mut full2 = node("d");
        full2.used_memory_bytes = 8 * GI;
        let mut s = Snapshot::new(vec![down, tainted, full1, full2]);
        assert_eq!(
            s.place(&demand("ns/w")).unwrap_err().0,
            "0/4 nodes: 2 insufficient memory, 1 not ready, 1 taint gpu:NoSchedule"
        );
        assert_eq!(
            Snapshot::new(Vec::new())
                .place(&demand("ns/w"))
                .unwrap_err()
                .0,
            "0/0 nodes: no nodes in the cluster"
        );
    }

    #[test]
    fn zero_requests_fit_on_nodes_of_unknown_size() {
        let mut unknown = node("a");
        unknown.cpu_millis = 0;
        unknown.memory_bytes = 0;
        let mut s = Snapshot::new(vec![unknown]);
        let d = Demand {
            workload: "ns/w".into(),
            ..Default::default()
        };
        assert_eq!(place(&mut s, &d), "a");
        assert!(s.place(&demand("ns/w")).is_err());
    }

    #[test]
    fn placing_many_chooses_as_placing_one_at_a_time() {
        let build = || {
            let mut nodes: Vec<NodeInfo> = (0..12)
                .map(|i| {
                    let mut n = node(&format!("n{i:02}"));
                    n.cpu_millis = 1000 + i * 150;
                    n.memory_bytes = GI + i * (GI / 4);
                    if i % 4 == 0 {
                        n.taints
                            .push(taint("spot", "", TaintEffect::PreferNoSchedule));
                    }
                    if i == 5 {
                        n.ready = false;
                    }
                    n
                })
                .collect();
            nodes[3].per_workload.insert("ns/w".into(), 2);
            Snapshot::new(nodes)
        };
        let mut d = demand("ns/w");
        d.cpu_millis = 300;
        let (mut one, mut many) = (build(), build());
        let singles: Vec<_> = (0..100).map(|_| one.place(&d)).collect();
        let batch = many.place_many(&d, 100);
        assert_eq!(singles, batch);
        assert!(
            batch.iter().any(Result::is_err),
            "the run ends in pending ones"
        );
    }

    /// A small deterministic generator (xorshift), so the mixed run is the same each time.
    struct Dice(u64);

    impl Dice {
        fn roll(&mut self, sides: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % sides
        }
    }

    /// Nodes of mixed sizes, labels, taints, GPUs and states, some already in use.
    fn mixed_nodes(dice: &mut Dice, count: usize) -> Vec<NodeInfo> {
        (0..count)
            .map(|i| {
                let mut n = node(&format!("m{i:03}"));
                n.cpu_millis = 1000 + 500 * dice.roll(6) as i64;
                n.memory_bytes = GI * (1 + dice.roll(4) as i64);
                n.ready = dice.roll(15) != 0;
                n.unschedulable = dice.roll(20) == 0;
                n.labels.insert("zone".into(), format!("z{}", dice.roll(3)));
                if dice.roll(6) == 0 {
                    n.taints.push(taint("gpu", "", TaintEffect::NoSchedule));
                    n.gpus = vec![Gpu {
                        driver: GpuDriver::Nvidia.into(),
                        model: String::new(),
                        vram_mb: 8_000,
                        index: 0,
                    }];
                }
                if dice.roll(4) == 0 {
                    n.taints
                        .push(taint("spot", "", TaintEffect::PreferNoSchedule));
                }
                if dice.roll(5) == 0 {
                    n.used_cpu_millis = 250 * dice.roll(4) as i64;
                    n.used_memory_bytes = (GI / 4) * dice.roll(4) as i64;
                    n.per_workload
                        .insert(format!("ns/w{}", dice.roll(10)), 1 + dice.roll(2) as u32);
                }
                n
            })
            .collect()
    }

    fn mixed_demand(dice: &mut Dice) -> Demand {
        // Few shapes, so signatures repeat (and more of them than are kept).
        let mut d = demand(&format!("ns/w{}", dice.roll(40)));
        d.cpu_millis = [0, 100, 250, 500, 700][dice.roll(5) as usize];
        d.memory_bytes = [0, 64 << 20, 256 << 20, GI / 2][dice.roll(4) as usize];
        match dice.roll(4) {
            0 => {
                d.node_selector
                    .insert("zone".into(), format!("z{}", dice.roll(3)));
            }
            1 => {
                d.node_selector.insert("zone".into(), "nowhere".into());
            }
            _ => {}
        }
        match dice.roll(4) {
            0 => d.tolerations.push(toleration(
                "gpu",
                TolerationOperator::Exists,
                "",
                TaintEffect::NoSchedule,
            )),
            1 => d.tolerations.push(toleration(
                "",
                TolerationOperator::Exists,
                "",
                TaintEffect::Unspecified,
            )),
            _ => {}
        }
        if dice.roll(12) == 0 {
            d.gpu = Some(GpuNeed {
                driver: GpuDriver::Any,
                min_vram_mb: 1_000,
            });
        }
        d
    }

    #[test]
    fn kept_eligible_sets_place_as_one_pass_per_instance_would() {
        for seed in [7_u64, 1_234_567, 0x5eed_cafe] {
            let mut dice = Dice(seed);
            let nodes = mixed_nodes(&mut dice, 200);
            let (mut kept, mut plain) = (Snapshot::new(nodes.clone()), Snapshot::new(nodes));
            let mut placed: Vec<(Placement, Demand)> = Vec::new();
            let mut pending = 0;
            for round in 0..1000 {
                let d = mixed_demand(&mut dice);
                // Up to 6: small next to 200 nodes, so kept sets are used (see place_many).
                let count = 1 + dice.roll(6) as usize;
                let many = kept.place_many(&d, count);
                let singles: Vec<_> = (0..count).map(|_| plain.place(&d)).collect();
                assert_eq!(many, singles, "seed {seed}, demand {round}: {d:?}");
                for p in many {
                    match p {
                        Ok(p) => placed.push((p, d.clone())),
                        Err(_) => pending += 1,
                    }
                }
                // Now and then instances go (scale-down, lost nodes): room comes back.
                if dice.roll(3) == 0 && !placed.is_empty() {
                    for _ in 0..=dice.roll(8) {
                        let at = dice.roll(placed.len() as u64) as usize;
                        let (p, d) = placed.swap_remove(at);
                        kept.remove(&p.node, &d, p.gpu);
                        plain.remove(&p.node, &d, p.gpu);
                        if placed.is_empty() {
                            break;
                        }
                    }
                }
            }
            assert!(pending > 0, "seed {seed}: the run fills nodes up");
            // Both ways were taken: kept sets, and scans past the most kept.
            assert_eq!(kept.eligible.len(), MAX_SIGNATURES, "seed {seed}");
            for (a, b) in kept.nodes().iter().zip(plain.nodes()) {
                assert_eq!(
                    (a.used_cpu_millis, a.used_memory_bytes, &a.per_workload),
                    (b.used_cpu_millis, b.used_memory_bytes, &b.per_workload),
                    "seed {seed}, node {}",
                    a.name
                );
            }
        }
    }

    #[test]
    fn daemons_belong_on_eligible_nodes_and_wait_for_room() {
        let mut worker = node("a");
        worker.labels.insert("role".into(), "edge".into());
        let mut full = node("b");
        full.labels.insert("role".into(), "edge".into());
        full.used_cpu_millis = 4000;
        let mut tainted = node("c");
        tainted.labels.insert("role".into(), "edge".into());
        tainted.taints.push(taint("x", "", TaintEffect::NoSchedule));
        let s = Snapshot::new(vec![worker, full, tainted, node("d")]);
        let mut d = demand("ns/agent");
        d.node_selector.insert("role".into(), "edge".into());
        assert_eq!(s.daemon_fit("a", &d), DaemonFit::Fits(None));
        assert_eq!(
            s.daemon_fit("b", &d),
            DaemonFit::NoRoom(Unschedulable("0/1 nodes: 1 insufficient cpu".into()))
        );
        assert_eq!(s.daemon_fit("c", &d), DaemonFit::NotEligible);
        assert_eq!(s.daemon_fit("d", &d), DaemonFit::NotEligible);
        assert_eq!(s.daemon_fit("missing", &d), DaemonFit::NotEligible);
    }
}
