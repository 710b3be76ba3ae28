//! Training data: label records split into train / held-back sets, served
//! in an order fixed by (seed, epoch) so a resumed run sees exactly the
//! batches an uninterrupted one would.

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
            _backend: PhantomData,
        }
    }

    fn with_records(&self, records: Arc<Vec<Arc<LabelRecord>>>) -> Self {
        Self {
            records,
            batch_size: self.batch_size,
            seed: self.seed,
            shuffle: self.shuffle,
            next_epoch: self.next_epoch.clone(),
            _backend: PhantomData,
        }
    }
}

struct EpochIter {
    records: Arc<Vec<Arc<LabelRecord>>>,
    order: Vec<usize>,
    pos: usize,
    batch_size: usize,
}

impl Iterator for EpochIter {
    type Item = RecordBatch;
    fn next(&mut self) -> Option<RecordBatch> {
        if self.pos >= self.order.len() {
            return None;
        }
        let end = (self.pos + self.batch_size).min(self.order.len());
        let records = self.order[self.pos..end]
            .iter()
            .map(|&i| self.records[i].clone())
            .collect();
        self.pos = end;
        Some(RecordBatch { records })
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
