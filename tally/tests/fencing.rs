//! 3 (database half): the fence in the real PostgreSQL and SQLite. A partial
//! from an older epoch and a partial that was already applied change nothing;
//! a gap is refused.

mod common;

use common::{Backend, World};
use schemas::Amount;

fn partial(topic: &str, epoch: i64, first: i64, last: i64, units: i128) -> schemas::Partial {
    common::partial(topic, 0, epoch, first, last, "m-1", units)
}

async fn zombies_change_nothing(backend: Backend) {
    let world = World::new("fence", backend).await;
    let store = world.store().await;
    let topic = world.orders.as_str();
    let first = store.claim(topic, 0, "worker-a").await.unwrap();
    let plan = store
        .apply(&[partial(topic, first.epoch, 0, 9, 10_000)])
        .await
        .unwrap();
    assert_eq!(plan.applied, 1);

    // worker-b takes over; worker-a is now a zombie.
    let second = store.claim(topic, 0, "worker-b").await.unwrap();
    assert_eq!((second.epoch, second.next_offset), (first.epoch + 1, 10));
    let zombie = partial(topic, first.epoch, 10, 19, 1_000_000);
    let replay = partial(topic, second.epoch, 0, 9, 1_000_000);
    let gap = partial(topic, second.epoch, 15, 19, 1_000_000);
    let plan = store.apply(&[zombie, replay, gap]).await.unwrap();
    assert_eq!(
        (
            plan.applied,
            plan.older_epoch,
            plan.already_applied,
            plan.violations.len()
        ),
        (0, 1, 1, 1)
    );
    let good = partial(topic, second.epoch, 10, 19, 5_000);
    assert_eq!(store.apply(&[good.clone(), good]).await.unwrap().applied, 1);

    let totals = store.totals(Some("m-1")).await.unwrap();
    let sums = totals.values().next().expect("one row");
    assert_eq!((sums.sales_amount, sums.sales_count), (Amount(15_000), 2));
    assert_eq!(store.progress().await.unwrap()[0].fence.next_offset, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombies_change_nothing_postgres() {
    zombies_change_nothing(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombies_change_nothing_sqlite() {
    zombies_change_nothing(Backend::Sqlite).await
}
