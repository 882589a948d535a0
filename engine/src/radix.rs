//! A radix tree over token ids: the index of both the prefix cache (which cached prefix shares
//! the most leading tokens with a new prompt) and the batch coalescer (which waiting jobs share a
//! prefix). Edges hold runs of tokens, so depth grows with the number of branch points, not with
//! prompt length.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

#[derive(Debug)]
struct Node<V> {
    /// Tokens on the edge from the parent (empty only at the root).
    edge: Vec<u32>,
    value: Option<V>,
    children: BTreeMap<u32, Node<V>>,
}

impl<V> Node<V> {
    fn new(edge: Vec<u32>, value: Option<V>) -> Self {
        Node {
            edge,
            value,
            children: BTreeMap::new(),
        }
    }

    fn values<'a>(&'a self, out: &mut Vec<&'a V>) {
        out.extend(self.value.as_ref());
        for child in self.children.values() {
            child.values(out);
        }
    }
}

/// Maps token sequences to values.
#[derive(Debug)]
pub struct RadixTree<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for RadixTree<V> {
    fn default() -> Self {
        RadixTree {
            root: Node::new(Vec::new(), None),
            len: 0,
        }
    }
}

/// Values grouped under the shallowest tree nodes at least `min_depth` tokens deep.
#[derive(Debug)]
pub struct Frontier<'a, V> {
    /// `(depth, values)`: every key of `values` starts with the same `depth` tokens, and no
    /// other key in the tree does.
    pub groups: Vec<(usize, Vec<&'a V>)>,
    /// Values whose keys are shorter than `min_depth` and share no `min_depth` tokens with
    /// another key.
    pub shallow: Vec<&'a V>,
}

fn common_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl<V> RadixTree<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the value of `key`, returning the one it replaces.
    pub fn insert(&mut self, key: &[u32], value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut rest = key;
        loop {
            let Some(&first) = rest.first() else {
                let old = node.value.replace(value);
                if old.is_none() {
                    self.len += 1;
                }
                return old;
            };
            match node.children.entry(first) {
                Entry::Vacant(e) => {
                    e.insert(Node::new(rest.to_vec(), Some(value)));
                    self.len += 1;
                    return None;
                }
                Entry::Occupied(e) => {
                    let child = e.into_mut();
                    let common = common_len(&child.edge, rest);
                    if common < child.edge.len() {
                        // Split the edge: the child keeps the shared part, a new node the rest.
                        let tail = child.edge.split_off(common);
                        let mut lower = Node::new(tail, child.value.take());
                        lower.children = std::mem::take(&mut child.children);
                        child.children.insert(lower.edge[0], lower);
                    }
                    rest = &rest[common..];
                    node = child;
                }
            }
        }
    }

    /// The value stored under exactly `key`.
    pub fn get_mut(&mut self, key: &[u32]) -> Option<&mut V> {
        let mut node = &mut self.root;
        let mut rest = key;
        while let Some(&first) = rest.first() {
            let child = node.children.get_mut(&first)?;
            if !rest.starts_with(&child.edge) {
                return None;
            }
            rest = &rest[child.edge.len()..];
            node = child;
        }
        node.value.as_mut()
    }

    /// Removes `key`, pruning branches left without values.
    pub fn remove(&mut self, key: &[u32]) -> Option<V> {
        fn go<V>(node: &mut Node<V>, rest: &[u32]) -> Option<V> {
            let Some(&first) = rest.first() else {
                return node.value.take();
            };
            let child = node.children.get_mut(&first)?;
            if !rest.starts_with(&child.edge) {
                return None;
            }
            let edge_len = child.edge.len();
            let removed = go(child, &rest[edge_len..]);
            if child.value.is_none() && child.children.is_empty() {
                node.children.remove(&first);
            }
            removed
        }
        let removed = go(&mut self.root, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The stored key sharing the most leading tokens with `key`: `(shared, value)`, where
    /// `shared` counts the tokens `key` and the value's key have in common (the value's key may
    /// be shorter, equal or longer). Among keys sharing as much, the one `rank` rates highest
    /// wins. `None` when no key shares a first token.
    pub fn longest_shared(&self, key: &[u32], rank: impl Fn(&V) -> u64) -> Option<(usize, &V)> {
        let mut node = &self.root;
        let mut rest = key;
        let mut shared = 0;
        while let Some(&first) = rest.first() {
            let Some(child) = node.children.get(&first) else {
                break;
            };
            let common = common_len(&child.edge, rest);
            shared += common;
            node = child;
            if common < child.edge.len() {
                break;
            }
            rest = &rest[common..];
        }
        if shared == 0 {
            return None;
        }
        // Every key below `node` starts with key[..shared].
        let mut below = Vec::new();
        node.values(&mut below);
        below
            .into_iter()
            .max_by_key(|v| rank(v))
            .map(|v| (shared, v))
    }

    /// Every value.
    pub fn values(&self) -> Vec<&V> {
        let mut out = Vec::new();
        self.root.values(&mut out);
        out
    }

    /// Groups the values by the shallowest nodes at depth `min_depth` or more (each group's
    /// keys share exactly its depth in tokens); see [`Frontier`].
    pub fn frontier(&self, min_depth: usize) -> Frontier<'_, V> {
        fn go<'a, V>(node: &'a Node<V>, depth: usize, min: usize, out: &mut Frontier<'a, V>) {
            let depth = depth + node.edge.len();
            if depth >= min && depth > 0 {
                let mut values = Vec::new();
                node.values(&mut values);
                out.groups.push((depth, values));
                return;
            }
            out.shallow.extend(node.value.as_ref());
            for child in node.children.values() {
                go(child, depth, min, out);
            }
        }
        let mut out = Frontier {
            groups: Vec::new(),
            shallow: Vec::new(),
        };
        go(&self.root, 0, min_depth.max(1), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove_with_splits() {
        let mut t = RadixTree::new();
        assert_eq!(t.insert(&[1, 2, 3, 4], "a"), None);
        assert_eq!(t.insert(&[1, 2, 5], "b"), None);
        assert_eq!(t.insert(&[1, 2], "c"), None);
        assert_eq!(t.insert(&[1, 2, 3, 4], "a2"), Some("a"));
        assert_eq!(t.len(), 3);
        assert_eq!(t.get_mut(&[1, 2]).copied(), Some("c"));
        assert_eq!(t.get_mut(&[1, 2, 3]), None);
        assert_eq!(t.remove(&[1, 2, 3, 4]), Some("a2"));
        assert_eq!(t.remove(&[1, 2, 3, 4]), None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get_mut(&[1, 2, 5]).copied(), Some("b"));
        let mut all: Vec<_> = t.values().into_iter().copied().collect();
        all.sort();
        assert_eq!(all, vec!["b", "c"]);
    }

    #[test]
    fn longest_shared_finds_partial_and_longer_keys() {
        let mut t = RadixTree::new();
        t.insert(&[1, 2, 3, 4, 5], 10u64);
        t.insert(&[1, 2, 3, 9], 20u64);
        t.insert(&[7, 8], 30u64);
        // Diverges inside the edge 4,5 after sharing 1,2,3,4.
        assert_eq!(t.longest_shared(&[1, 2, 3, 4, 6], |v| *v), Some((4, &10)));
        // Shares 1,2,3 with both keys below; the higher rank wins.
        assert_eq!(t.longest_shared(&[1, 2, 3, 6], |v| *v), Some((3, &20)));
        assert_eq!(
            t.longest_shared(&[1, 2, 3, 6], |v| 100 - *v),
            Some((3, &10))
        );
        // A stored key longer than the query.
        assert_eq!(t.longest_shared(&[7], |v| *v), Some((1, &30)));
        assert_eq!(t.longest_shared(&[5], |v| *v), None);
    }

    #[test]
    fn frontier_groups_keys_sharing_min_depth() {
        let mut t = RadixTree::new();
        let sys = [1u32, 2, 3, 4];
        t.insert(&[&sys[..], &[10, 11]].concat(), 'a');
        t.insert(&[&sys[..], &[12]].concat(), 'b');
        t.insert(&[1, 2, 9, 9, 9], 'c');
        t.insert(&[5], 'd');
        let f = t.frontier(4);
        assert_eq!(f.shallow, vec![&'d']);
        let mut groups: Vec<(usize, Vec<char>)> = f
            .groups
            .into_iter()
            .map(|(d, v)| (d, v.into_iter().copied().collect()))
            .collect();
        groups.sort();
        assert_eq!(groups, vec![(4, vec!['a', 'b']), (5, vec!['c'])]);
    }
}
