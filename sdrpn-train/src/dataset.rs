//! Training data: label records split into train / held-back sets, served
//! in an order fixed by (seed, epoch) so a resumed run sees exactly the
//! batches an uninterrupted one would; on several devices, each global batch
//! split evenly across them ([`EpochLoader::sharded`]).

use crate::config::TrainSettings;
use crate::label_store::LabelRecord;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::tensor::backend::Backend;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use sdrpn_core::rng::SplitMix;

/// A micro-batch: label records (the step turns them into tensors).
#[derive(Clone, Debug)]
pub struct RecordBatch {
    /// The records of the batch.
    pub records: Vec<Arc<LabelRecord>>,
    /// On several devices: every record of the global batch this one is a
    /// device's share of (its own records included). The loss is then
    /// normalised by the global batch's valid tokens, so the devices'
    /// summed gradients equal the global batch's on one device.
    pub global: Option<Arc<Vec<Arc<LabelRecord>>>>,
}

/// Splits records into (train, held-back): a seeded permutation, the first
/// `holdout` for validation (at most half), then the first `samples` of the
/// rest for training when a subset is asked for.
pub fn split_records(
    records: Vec<LabelRecord>,
    train: &TrainSettings,
) -> (Vec<Arc<LabelRecord>>, Vec<Arc<LabelRecord>>) {
    let mut all: Vec<Arc<LabelRecord>> = records.into_iter().map(Arc::new).collect();
    SplitMix::new(train.seed).shuffle(&mut all);
    let holdout = train.holdout.min(all.len() / 2);
    let rest = all.split_off(holdout);
    let train_set = match train.samples {
        Some(n) => rest.into_iter().take(n).collect(),
        None => rest,
    };
    (train_set, all)
}

/// Serves [`RecordBatch`]es; epoch `e` uses the order of `seed + e`.
pub struct EpochLoader<B: Backend> {
    records: Arc<Vec<Arc<LabelRecord>>>,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    next_epoch: Arc<AtomicUsize>,
    /// The devices the global batches are split across (1: not split).
    shards: usize,
    /// Which device's share this loader serves, once sliced.
    shard: Option<usize>,
    /// Shares handed out by [`DataLoader::slice`] so far.
    sliced: Arc<AtomicUsize>,
    _backend: PhantomData<fn() -> B>,
}

impl<B: Backend> EpochLoader<B> {
    /// A loader whose first `iter()` is epoch `first_epoch` (the epoch a
    /// resumed run starts at, counting from 0).
    pub fn new(
        records: Vec<Arc<LabelRecord>>,
        batch_size: usize,
        seed: u64,
        shuffle: bool,
        first_epoch: usize,
    ) -> Self {
        Self {
            records: Arc::new(records),
            batch_size: batch_size.max(1),
            seed,
            shuffle,
            next_epoch: Arc::new(AtomicUsize::new(first_epoch)),
            shards: 1,
            shard: None,
            sliced: Arc::new(AtomicUsize::new(0)),
            _backend: PhantomData,
        }
    }

    /// This loader for training on `devices` devices: burn-train's
    /// multi-device strategy slices it once per device, in device order
    /// (`split_dataloader`), and slice `d` then serves, for every global
    /// batch of `batch_size` records (the same batches, in the same order,
    /// as one device sees), the `d`-th of `devices` even parts, with the
    /// whole batch alongside ([`RecordBatch::global`]).
    pub fn sharded(mut self, devices: usize) -> Self {
        self.shards = devices.max(1);
        self
    }

    fn with_records(&self, records: Arc<Vec<Arc<LabelRecord>>>) -> Self {
        Self {
            records,
            batch_size: self.batch_size,
            seed: self.seed,
            shuffle: self.shuffle,
            next_epoch: self.next_epoch.clone(),
            shards: self.shards,
            shard: self.shard,
            sliced: self.sliced.clone(),
            _backend: PhantomData,
        }
    }
}

struct EpochIter {
    records: Arc<Vec<Arc<LabelRecord>>>,
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
    /// `(shard, shards)` when serving one device's share of each batch.
    shard: Option<(usize, usize)>,
}

impl Iterator for EpochIter {
    type Item = RecordBatch;
    fn next(&mut self) -> Option<RecordBatch> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let batch: Vec<Arc<LabelRecord>> = self.order[self.pos..end]
            .iter()
            .map(|&i| self.records[i].clone())
            .collect();
        self.pos = end;
        let Some((shard, shards)) = self.shard else {
            return Some(RecordBatch {
                records: batch,
                global: None,
            });
        };
        // Even parts; only a last, short batch can leave a device without one.
        let m = batch.len();
        let records = batch[shard * m / shards..(shard + 1) * m / shards].to_vec();
        if records.is_empty() {
            return None;
        }
        Some(RecordBatch {
            records,
            global: Some(Arc::new(batch)),
        })
    }
}

impl DataLoaderIterator<RecordBatch> for EpochIter {
    fn progress(&self) -> Progress {
        Progress::new(self.pos, self.order.len())
    }
}

impl<B: Backend> DataLoader<B, RecordBatch> for EpochLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<RecordBatch> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst) as u64;
        let mut order: Vec<usize> = (0..self.records.len()).collect();
        if self.shuffle {
            SplitMix::new(self.seed.wrapping_add(epoch.wrapping_mul(0x1000_0000_01B3)))
                .shuffle(&mut order);
        }
        Box::new(EpochIter {
            records: self.records.clone(),
            order,
            pos: 0,
            batch_size: self.batch_size,
            shard: self.shard.map(|d| (d, self.shards)),
        })
    }

    fn num_items(&self) -> usize {
        self.records.len()
    }

    fn to_device(&self, _device: &B::Device) -> Arc<dyn DataLoader<B, RecordBatch>> {
        // Batches are plain records; the step builds tensors on the model's device.
        Arc::new(self.with_records(self.records.clone()))
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B, RecordBatch>> {
        if self.shards > 1 && self.shard.is_none() {
            // One device's share of every batch (see `sharded`), with an
            // epoch counter of its own: each device's loader starts one
            // epoch per epoch.
            let shard = self.sliced.fetch_add(1, Ordering::SeqCst) % self.shards;
            let mut part = self.with_records(self.records.clone());
            part.shard = Some(shard);
            part.next_epoch = Arc::new(AtomicUsize::new(self.next_epoch.load(Ordering::SeqCst)));
            return Arc::new(part);
        }
        let part =
            self.records[start.min(self.records.len())..end.min(self.records.len())].to_vec();
        Arc::new(self.with_records(Arc::new(part)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<LabelRecord> {
        (0..n)
            .map(|i| LabelRecord {
                question_id: i.to_string(),
                image: String::new(),
                question: String::new(),
                prompt: String::new(),
                answer: String::new(),
                answer_tokens: 1,
                fed_back: 1,
                grounding: vec![],
                sink: vec![],
                massive: None,
            })
            .collect()
    }

    fn ids(batches: Box<dyn DataLoaderIterator<RecordBatch> + '_>) -> Vec<String> {
        batches
            .flat_map(|b| {
                b.records
                    .iter()
                    .map(|r| r.question_id.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn split_is_seeded_and_disjoint() {
        let mut t = crate::config::SdrpnConfig::tiny().train;
        t.holdout = 3;
        t.samples = Some(4);
        let (a, b) = split_records(records(20), &t);
        let (a2, b2) = split_records(records(20), &t);
        assert_eq!((a.len(), b.len()), (4, 3));
        assert_eq!(a, a2);
        assert_eq!(b, b2);
        assert!(a.iter().all(|r| !b.contains(r)));
    }

    #[test]
    fn sharded_slices_split_each_global_batch_in_device_order() {
        let recs: Vec<_> = records(11).into_iter().map(Arc::new).collect();
        let whole = EpochLoader::<crate::test_backend::B>::new(recs.clone(), 4, 7, true, 2);
        let batches: Vec<Vec<String>> = whole
            .iter()
            .map(|b| b.records.iter().map(|r| r.question_id.clone()).collect())
            .collect();
        let sharded = EpochLoader::<crate::test_backend::B>::new(recs, 4, 7, true, 2).sharded(2);
        // As burn-train's split_dataloader slices it: once per device, in order.
        let parts = [sharded.slice(0, 5), sharded.slice(5, 11)];
        let mut iters: Vec<_> = parts.iter().map(|p| p.iter()).collect();
        for batch in &batches {
            let shares: Vec<RecordBatch> = iters.iter_mut().filter_map(|it| it.next()).collect();
            let ids = |b: &RecordBatch| -> Vec<String> {
                b.records.iter().map(|r| r.question_id.clone()).collect()
            };
            // Batches of 4, 4, 3: shares of 2 + 2, 2 + 2, 1 + 2.
            let joined: Vec<String> = shares.iter().flat_map(ids).collect();
            assert_eq!(
                &joined, batch,
                "the shares make up the global batch, in order"
            );
            for share in &shares {
                let global: Vec<String> = share
                    .global
                    .as_ref()
                    .unwrap()
                    .iter()
                    .map(|r| r.question_id.clone())
                    .collect();
                assert_eq!(&global, batch);
            }
        }
        assert!(iters.iter_mut().all(|it| it.next().is_none()));
        // The next epoch is the one-device loader's next epoch, on each device.
        let next: Vec<String> = ids(whole.iter());
        let joined: Vec<String> = {
            let (a, mut b) = (parts[0].iter(), parts[1].iter());
            let mut v = Vec::new();
            for x in a {
                v.extend(x.records.iter().map(|r| r.question_id.clone()));
                if let Some(y) = b.next() {
                    v.extend(y.records.iter().map(|r| r.question_id.clone()));
                }
            }
            v
        };
        assert_eq!(joined, next);
    }

    #[test]
    fn epoch_order_depends_only_on_seed_and_epoch() {
        let recs: Vec<_> = records(10).into_iter().map(Arc::new).collect();
        let fresh = EpochLoader::<crate::test_backend::B>::new(recs.clone(), 3, 7, true, 0);
        let e0 = ids(fresh.iter());
        let e1 = ids(fresh.iter());
        assert_ne!(e0, e1, "epochs are reshuffled");
        let resumed = EpochLoader::<crate::test_backend::B>::new(recs, 3, 7, true, 1);
        assert_eq!(
            ids(resumed.iter()),
            e1,
            "a loader resumed at epoch 1 replays epoch 1"
        );
        // Each epoch is a permutation: every record exactly once.
        let every: Vec<String> = {
            let mut v: Vec<String> = (0..10).map(|i| i.to_string()).collect();
            v.sort();
            v
        };
        for epoch in [&e0, &e1] {
            let mut sorted = epoch.clone();
            sorted.sort();
            assert_eq!(sorted, every, "{epoch:?}");
        }
    }
}
