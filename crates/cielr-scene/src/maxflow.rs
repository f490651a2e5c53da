//! Minimum s-t cuts by maximum flow: the Boykov–Kolmogorov algorithm.
//!
//! Y. Boykov and V. Kolmogorov, *An Experimental Comparison of Min-Cut/Max-Flow Algorithms
//! for Energy Minimization in Vision*, PAMI 2004. Two search trees grow from the source and
//! the sink through non-saturated arcs; when they touch, the path is augmented, the
//! saturated arcs leave orphans behind, and the orphans either find a new parent in their
//! own tree (preferring short paths to the terminal, using the paper's time-stamp and
//! distance heuristics) or become free nodes. The trees are kept between augmentations,
//! which is what makes the algorithm fast on the short, wide paths of pixel grids.
//!
//! Capacities are integers (`i64`) so that "saturated" is an exact test; callers scale and
//! round their energies. A [`Graph`] is built once (nodes, terminal capacities, pairs of
//! opposite arcs) and solved with [`Graph::maxflow`]. Terminal capacities may then be changed
//! ([`Graph::set_terminal`]) and the graph solved again: the flow already pushed through the
//! arcs between nodes is kept (a reparametrisation, as in Kohli and Torr's dynamic graph
//! cuts), so a sequence of similar problems — GrabCut's iterations — costs much less than
//! solving each from scratch.

use std::collections::VecDeque;

use crate::error::{Result, SceneError};

/// A flow network: nodes with capacities from the source and to the sink, and arcs between
/// nodes.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    /// Arcs of node `i`: `first[i]..first[i + 1]` (built on the first solve).
    first: Vec<u32>,
    arcs: Vec<Arc>,
    /// The arcs' capacities as given.
    arc_cap: Vec<i64>,
    /// Edges `(i, j, capacity i->j, capacity j->i)` added before the first solve.
    staged: Vec<(u32, u32, i64, i64)>,
    /// The terminal capacities as given (`add_terminal` sums, `set_terminal` replaces).
    source_cap: Vec<i64>,
    sink_cap: Vec<i64>,
    solved: bool,
    queue: VecDeque<u32>,
    orphans: VecDeque<u32>,
    time: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    /// Residual terminal capacity: positive from the source, negative to the sink.
    trcap: i64,
    /// The arc to the parent (from this node), or a marker.
    parent: u32,
    /// Time stamp and distance to the terminal (the paper's heuristics).
    ts: u32,
    dist: u32,
    tree: u8,
    /// In the active queue (or the node being grown).
    active: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Arc {
    head: u32,
    sister: u32,
    rcap: i64,
}

/// Nodes are `u32`; the three largest values are markers.
const NODE_LIMIT: u32 = u32::MAX - 3;
/// `parent` of a free node.
const NONE: u32 = u32::MAX;
/// `parent` of a node attached directly to its terminal.
const TERMINAL: u32 = u32::MAX - 1;
/// `parent` of an orphan waiting for adoption.
const ORPHAN: u32 = u32::MAX - 2;
/// Infinite distance in the adoption search.
const INFINITE_D: u32 = u32::MAX;

const FREE: u8 = 0;
const SOURCE_TREE: u8 = 1;
const SINK_TREE: u8 = 2;

impl Graph {
    /// A network of `nodes` nodes without arcs, with room reserved for `edges` edges.
    pub fn new(nodes: usize, edges: usize) -> Result<Self> {
        if nodes >= NODE_LIMIT as usize || edges >= (NODE_LIMIT / 2) as usize {
            return Err(SceneError::InvalidInput(format!(
                "a flow network of {nodes} nodes and {edges} edges exceeds the limit of {NODE_LIMIT}"
            )));
        }
        Ok(Graph {
            nodes: vec![Node::default(); nodes],
            staged: Vec::with_capacity(edges),
            source_cap: vec![0; nodes],
            sink_cap: vec![0; nodes],
            ..Graph::default()
        })
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    fn check_node(&self, i: usize) -> Result<()> {
        if i < self.nodes.len() {
            Ok(())
        } else {
            Err(SceneError::InvalidInput(format!(
                "node {i} out of range (graph of {})",
                self.nodes.len()
            )))
        }
    }

    /// Adds capacity `source` from the source to node `i` and `sink` from `i` to the sink
    /// (summing over calls). Fails on a node out of range or a negative capacity.
    pub fn add_terminal(&mut self, i: usize, source: i64, sink: i64) -> Result<()> {
        self.check_node(i)?;
        let (s, t) = (self.source_cap[i], self.sink_cap[i]);
        self.set_terminal(i, s.saturating_add(source), t.saturating_add(sink))
            .map_err(|_| {
                SceneError::InvalidInput(format!(
                    "negative terminal capacity ({source}, {sink}) at node {i}"
                ))
            })
    }

    /// Sets the capacities from the source to node `i` and from `i` to the sink, replacing
    /// earlier ones; allowed after a solve (the next [`Graph::maxflow`] continues from the
    /// current flow). Fails on a node out of range or a negative capacity.
    pub fn set_terminal(&mut self, i: usize, source: i64, sink: i64) -> Result<()> {
        self.check_node(i)?;
        if source < 0 || sink < 0 {
            return Err(SceneError::InvalidInput(format!(
                "negative terminal capacity ({source}, {sink}) at node {i}"
            )));
        }
        // The residual terminal capacity is (source - flow in) - (sink - flow out); only
        // the difference of the two capacities enters it.
        let delta = (source - sink) - (self.source_cap[i] - self.sink_cap[i]);
        self.nodes[i].trcap += delta;
        self.source_cap[i] = source;
        self.sink_cap[i] = sink;
        Ok(())
    }

    /// Adds an edge between nodes `i` and `j` with capacity `cap` from `i` to `j` and
    /// `rev_cap` from `j` to `i`. Fails on nodes out of range, `i == j`, negative capacities,
    /// or after the first solve.
    pub fn add_edge(&mut self, i: usize, j: usize, cap: i64, rev_cap: i64) -> Result<()> {
        self.check_node(i)?;
        self.check_node(j)?;
        if i == j || cap < 0 || rev_cap < 0 {
            return Err(SceneError::InvalidInput(format!(
                "edge ({i}, {j}) with capacities ({cap}, {rev_cap}) is invalid"
            )));
        }
        if self.solved {
            return Err(SceneError::InvalidInput(
                "edges cannot be added after the graph was solved".into(),
            ));
        }
        self.staged.push((i as u32, j as u32, cap, rev_cap));
        Ok(())
    }

    /// Computes a maximum flow; returns its value, the capacity of the minimum cut under the
    /// current capacities. The cut's sides are then given by [`Graph::is_source_side`].
    pub fn maxflow(&mut self) -> i64 {
        if !self.solved {
            self.build_arcs();
            self.solved = true;
        }
        self.init_trees();
        self.run();
        self.cut_capacity()
    }

    /// Whether node `i` is on the source side of the last minimum cut (reachable from the
    /// source in the residual network); `false` before a solve or out of range.
    pub fn is_source_side(&self, i: usize) -> bool {
        self.solved
            && self
                .nodes
                .get(i)
                .is_some_and(|n| n.parent != NONE && n.tree == SOURCE_TREE)
    }

    fn build_arcs(&mut self) {
        let n = self.nodes.len();
        let mut degree = vec![0u32; n];
        for &(i, j, _, _) in &self.staged {
            degree[i as usize] += 1;
            degree[j as usize] += 1;
        }
        let mut first = vec![0u32; n + 1];
        for i in 0..n {
            first[i + 1] = first[i] + degree[i];
        }
        let mut fill: Vec<u32> = first[..n].to_vec();
        let mut arcs = vec![Arc::default(); first[n] as usize];
        let mut arc_cap = vec![0i64; first[n] as usize];
        for &(i, j, c, rc) in &self.staged {
            let a = fill[i as usize];
            fill[i as usize] += 1;
            let b = fill[j as usize];
            fill[j as usize] += 1;
            arcs[a as usize] = Arc {
                head: j,
                sister: b,
                rcap: c,
            };
            arcs[b as usize] = Arc {
                head: i,
                sister: a,
                rcap: rc,
            };
            arc_cap[a as usize] = c;
            arc_cap[b as usize] = rc;
        }
        self.first = first;
        self.arcs = arcs;
        self.arc_cap = arc_cap;
        self.staged = Vec::new();
    }

    fn init_trees(&mut self) {
        self.queue.clear();
        self.orphans.clear();
        self.time = 0;
        for i in 0..self.nodes.len() {
            let n = &mut self.nodes[i];
            n.ts = 0;
            n.active = false;
            if n.trcap != 0 {
                n.tree = if n.trcap > 0 { SOURCE_TREE } else { SINK_TREE };
                n.parent = TERMINAL;
                n.dist = 1;
                self.set_active(i as u32);
            } else {
                n.tree = FREE;
                n.parent = NONE;
                n.dist = 0;
            }
        }
    }

    fn cut_capacity(&self) -> i64 {
        let mut c = 0i64;
        for i in 0..self.nodes.len() {
            if self.is_source_side(i) {
                c += self.sink_cap[i];
                for a in self.arc_range(i as u32) {
                    if !self.is_source_side(self.arcs[a].head as usize) {
                        c += self.arc_cap[a];
                    }
                }
            } else {
                c += self.source_cap[i];
            }
        }
        c
    }

    fn set_active(&mut self, i: u32) {
        let n = &mut self.nodes[i as usize];
        if !n.active {
            n.active = true;
            self.queue.push_back(i);
        }
    }

    /// The next active node that still belongs to a tree.
    fn next_active(&mut self) -> Option<u32> {
        while let Some(i) = self.queue.pop_front() {
            let n = &mut self.nodes[i as usize];
            n.active = false;
            if n.parent != NONE {
                return Some(i);
            }
        }
        None
    }

    fn arc_range(&self, i: u32) -> std::ops::Range<usize> {
        self.first[i as usize] as usize..self.first[i as usize + 1] as usize
    }

    fn run(&mut self) {
        let mut current: Option<u32> = None;
        loop {
            let i = current.take().and_then(|i| {
                let n = &mut self.nodes[i as usize];
                n.active = false;
                (n.parent != NONE).then_some(i)
            });
            let Some(i) = i.or_else(|| self.next_active()) else {
                break;
            };
            let middle = self.grow(i);
            self.time = self.time.wrapping_add(1);
            if let Some(a) = middle {
                // Keep `i` as the current node: it may touch the other tree again.
                self.nodes[i as usize].active = true;
                current = Some(i);
                self.augment(a as usize);
                while let Some(o) = self.orphans.pop_front() {
                    self.adopt(o);
                }
            }
        }
    }

    /// Grows the tree of `i` by one layer; returns an arc from the source tree to the sink
    /// tree when the trees touch.
    fn grow(&mut self, i: u32) -> Option<u32> {
        let ni = self.nodes[i as usize];
        let source = ni.tree == SOURCE_TREE;
        for a in self.arc_range(i) {
            let arc = self.arcs[a];
            // The arc the flow would take: i -> j in the source tree, j -> i in the sink tree.
            let open = if source {
                arc.rcap > 0
            } else {
                self.arcs[arc.sister as usize].rcap > 0
            };
            if !open {
                continue;
            }
            let j = arc.head as usize;
            let nj = &mut self.nodes[j];
            if nj.parent == NONE {
                nj.tree = ni.tree;
                nj.parent = arc.sister;
                nj.ts = ni.ts;
                nj.dist = ni.dist + 1;
                self.set_active(j as u32);
            } else if nj.tree != ni.tree {
                return Some(if source { a as u32 } else { arc.sister });
            } else if nj.ts <= ni.ts && nj.dist > ni.dist {
                nj.parent = arc.sister;
                nj.ts = ni.ts;
                nj.dist = ni.dist + 1;
            }
        }
        None
    }

    fn make_orphan_front(&mut self, i: usize) {
        self.nodes[i].parent = ORPHAN;
        self.orphans.push_front(i as u32);
    }

    fn make_orphan_rear(&mut self, i: usize) {
        self.nodes[i].parent = ORPHAN;
        self.orphans.push_back(i as u32);
    }

    /// Pushes the bottleneck capacity along source -> ... -> middle -> ... -> sink.
    fn augment(&mut self, middle: usize) {
        let tail = self.arcs[self.arcs[middle].sister as usize].head as usize;
        let head = self.arcs[middle].head as usize;
        let mut bottleneck = self.arcs[middle].rcap;
        // Source tree: flow goes from parents to children.
        let mut i = tail;
        loop {
            let a = self.nodes[i].parent;
            if a == TERMINAL {
                break;
            }
            let arc = self.arcs[a as usize];
            bottleneck = bottleneck.min(self.arcs[arc.sister as usize].rcap);
            i = arc.head as usize;
        }
        bottleneck = bottleneck.min(self.nodes[i].trcap);
        // Sink tree: flow goes from children to parents.
        let mut i = head;
        loop {
            let a = self.nodes[i].parent;
            if a == TERMINAL {
                break;
            }
            let arc = self.arcs[a as usize];
            bottleneck = bottleneck.min(arc.rcap);
            i = arc.head as usize;
        }
        bottleneck = bottleneck.min(-self.nodes[i].trcap);

        let sister = self.arcs[middle].sister as usize;
        self.arcs[sister].rcap += bottleneck;
        self.arcs[middle].rcap -= bottleneck;
        let mut i = tail;
        loop {
            let a = self.nodes[i].parent;
            if a == TERMINAL {
                break;
            }
            let a = a as usize;
            let s = self.arcs[a].sister as usize;
            self.arcs[a].rcap += bottleneck;
            self.arcs[s].rcap -= bottleneck;
            let next = self.arcs[a].head as usize;
            if self.arcs[s].rcap == 0 {
                self.make_orphan_front(i);
            }
            i = next;
        }
        self.nodes[i].trcap -= bottleneck;
        if self.nodes[i].trcap == 0 {
            self.make_orphan_front(i);
        }
        let mut i = head;
        loop {
            let a = self.nodes[i].parent;
            if a == TERMINAL {
                break;
            }
            let a = a as usize;
            let s = self.arcs[a].sister as usize;
            self.arcs[s].rcap += bottleneck;
            self.arcs[a].rcap -= bottleneck;
            let next = self.arcs[a].head as usize;
            if self.arcs[a].rcap == 0 {
                self.make_orphan_front(i);
            }
            i = next;
        }
        self.nodes[i].trcap += bottleneck;
        if self.nodes[i].trcap == 0 {
            self.make_orphan_front(i);
        }
    }

    /// Length of the path from `start` to its terminal through valid parents, or
    /// `INFINITE_D` when it passes through an orphan; stamps the path with the current time.
    fn origin_distance(&mut self, start: usize) -> u32 {
        let mut j = start;
        let mut d = 0u32;
        loop {
            let n = self.nodes[j];
            if n.ts == self.time {
                d += n.dist;
                break;
            }
            d += 1;
            if n.parent == TERMINAL {
                self.nodes[j].ts = self.time;
                self.nodes[j].dist = 1;
                break;
            }
            if n.parent == ORPHAN || n.parent == NONE {
                return INFINITE_D;
            }
            j = self.arcs[n.parent as usize].head as usize;
        }
        // Stamp the path so that later searches stop early.
        let mut j = start;
        let mut dd = d;
        while self.nodes[j].ts != self.time {
            let n = &mut self.nodes[j];
            n.ts = self.time;
            n.dist = dd;
            dd = dd.saturating_sub(1);
            if n.parent >= ORPHAN {
                break; // cannot happen on a valid path: its terminal node is stamped
            }
            j = self.arcs[n.parent as usize].head as usize;
        }
        d
    }

    /// Finds a new parent for orphan `i` in its tree, or frees it.
    fn adopt(&mut self, i: u32) {
        let tree = self.nodes[i as usize].tree;
        let source = tree == SOURCE_TREE;
        let mut best: Option<(u32, u32)> = None; // (arc, distance)
        for a0 in self.arc_range(i) {
            let arc = self.arcs[a0];
            // The arc the flow would take from the candidate parent j: j -> i in the source
            // tree, i -> j in the sink tree.
            let open = if source {
                self.arcs[arc.sister as usize].rcap > 0
            } else {
                arc.rcap > 0
            };
            let j = arc.head as usize;
            if !open || self.nodes[j].tree != tree || self.nodes[j].parent == NONE {
                continue;
            }
            let d = self.origin_distance(j);
            if d != INFINITE_D && best.is_none_or(|(_, bd)| d < bd) {
                best = Some((a0 as u32, d));
            }
        }
        let iu = i as usize;
        if let Some((a, d)) = best {
            let n = &mut self.nodes[iu];
            n.parent = a;
            n.ts = self.time;
            n.dist = d + 1;
            return;
        }
        // No parent: `i` becomes free; its tree neighbours may grow into it again, and its
        // children become orphans.
        for a0 in self.arc_range(i) {
            let arc = self.arcs[a0];
            let j = arc.head as usize;
            let nj = self.nodes[j];
            if nj.tree != tree || nj.parent == NONE {
                continue;
            }
            let open = if source {
                self.arcs[arc.sister as usize].rcap > 0
            } else {
                arc.rcap > 0
            };
            if open {
                self.set_active(j as u32);
            }
            if nj.parent != TERMINAL
                && nj.parent != ORPHAN
                && self.arcs[nj.parent as usize].head == i
            {
                self.make_orphan_rear(j);
            }
        }
        let n = &mut self.nodes[iu];
        n.parent = NONE;
        n.tree = FREE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Edge = (usize, usize, i64, i64);

    /// Edmonds–Karp on a dense matrix, for checking.
    fn reference_maxflow(n: usize, src: &[i64], snk: &[i64], edges: &[Edge]) -> i64 {
        let (s, t) = (n, n + 1);
        let m = n + 2;
        let mut c = vec![vec![0i64; m]; m];
        for i in 0..n {
            c[s][i] += src[i];
            c[i][t] += snk[i];
        }
        for &(i, j, a, b) in edges {
            c[i][j] += a;
            c[j][i] += b;
        }
        let mut flow = 0;
        loop {
            let mut prev = vec![usize::MAX; m];
            prev[s] = s;
            let mut q = VecDeque::from([s]);
            while let Some(u) = q.pop_front() {
                for v in 0..m {
                    if prev[v] == usize::MAX && c[u][v] > 0 {
                        prev[v] = u;
                        q.push_back(v);
                    }
                }
            }
            if prev[t] == usize::MAX {
                return flow;
            }
            let mut b = i64::MAX;
            let mut v = t;
            while v != s {
                b = b.min(c[prev[v]][v]);
                v = prev[v];
            }
            v = t;
            while v != s {
                c[prev[v]][v] -= b;
                c[v][prev[v]] += b;
                v = prev[v];
            }
            flow += b;
        }
    }

    /// The capacity of the cut the graph reports, recomputed from scratch.
    fn cut_of(g: &Graph, src: &[i64], snk: &[i64], edges: &[Edge]) -> i64 {
        let side = |i: usize| g.is_source_side(i);
        let mut cap = 0;
        for i in 0..src.len() {
            cap += if side(i) { snk[i] } else { src[i] };
        }
        for &(i, j, a, b) in edges {
            if side(i) && !side(j) {
                cap += a;
            }
            if side(j) && !side(i) {
                cap += b;
            }
        }
        cap
    }

    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n.max(1)
        }

        fn terminal(&mut self, n: usize) -> Vec<i64> {
            (0..n)
                .map(|_| {
                    if self.below(3) == 0 {
                        self.below(20) as i64
                    } else {
                        0
                    }
                })
                .collect()
        }
    }

    #[test]
    fn matches_reference_on_random_graphs_and_resolves() {
        for seed in 0..300u64 {
            let mut r = Lcg(seed + 1);
            let n = 2 + r.below(if seed % 10 == 0 { 80 } else { 30 }) as usize;
            let mut edges = Vec::new();
            for _ in 0..r.below(3 * n as u64 + 1) {
                let (i, j) = (r.below(n as u64) as usize, r.below(n as u64) as usize);
                if i != j {
                    edges.push((i, j, r.below(10) as i64, r.below(10) as i64));
                }
            }
            let mut g = Graph::new(n, edges.len()).unwrap();
            for &(i, j, a, b) in &edges {
                g.add_edge(i, j, a, b).unwrap();
            }
            // Solve, then change the terminal capacities and solve again (twice).
            for round in 0..3 {
                let (src, snk) = (r.terminal(n), r.terminal(n));
                for i in 0..n {
                    if round == 0 {
                        g.add_terminal(i, src[i], snk[i]).unwrap();
                    } else {
                        g.set_terminal(i, src[i], snk[i]).unwrap();
                    }
                }
                let flow = g.maxflow();
                let want = reference_maxflow(n, &src, &snk, &edges);
                assert_eq!(flow, want, "seed {seed} round {round}");
                assert_eq!(
                    cut_of(&g, &src, &snk, &edges),
                    want,
                    "seed {seed} round {round}"
                );
            }
        }
    }

    #[test]
    fn grid_with_strong_terminals_splits_where_expected() {
        // A 20x20 grid: the left half prefers the source, the right half the sink.
        let (w, h) = (20usize, 20usize);
        let mut g = Graph::new(w * h, 2 * w * h).unwrap();
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if x < w / 2 {
                    g.add_terminal(i, 10, 0).unwrap();
                } else {
                    g.add_terminal(i, 0, 10).unwrap();
                }
                if x + 1 < w {
                    g.add_edge(i, i + 1, 3, 3).unwrap();
                }
                if y + 1 < h {
                    g.add_edge(i, i + w, 3, 3).unwrap();
                }
            }
        }
        assert_eq!(g.maxflow(), 3 * h as i64);
        for y in 0..h {
            for x in 0..w {
                assert_eq!(g.is_source_side(y * w + x), x < w / 2);
            }
        }
        assert!(g.add_edge(0, 1, 1, 1).is_err(), "no edges after solving");
    }

    #[test]
    fn rejects_bad_input() {
        let mut g = Graph::new(3, 0).unwrap();
        assert!(g.add_edge(0, 3, 1, 1).is_err());
        assert!(g.add_edge(1, 1, 1, 1).is_err());
        assert!(g.add_edge(0, 1, -1, 1).is_err());
        assert!(g.add_terminal(5, 1, 1).is_err());
        assert!(g.add_terminal(0, -1, 1).is_err());
        assert!(g.set_terminal(0, 1, -1).is_err());
        assert!(!g.is_source_side(0), "nothing is solved yet");
        let mut empty = Graph::new(0, 0).unwrap();
        assert_eq!(empty.maxflow(), 0);
        assert!(!empty.is_source_side(0));
    }
}
