//! DockerEventsWatcher against the real engine: another actor's `docker kill` and `docker stop` (done
//! through the engine API) arrive as NodeInterruptionNotice then NodeUnexpectedlyLost; a container
//! started by someone else arrives as NodeCreated; the pool's own create and remove produce nothing.

mod docker_support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use autoscaler::docker::events_watcher::SOURCE;
use autoscaler::docker::{
    CreateWorker, DockerEventsWatcher, DockerWorkerPool, LABEL_CLUSTER_ID, LABEL_MANAGED_BY,
    MANAGED_BY_VALUE,
};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bus::event::Event;
use bus::{Envelope, Metadata};
use docker_support::{TestEnv, TEST_IMAGE, TEST_LABEL};
use tokio::sync::{mpsc, oneshot};

/// How long an expected event may take to arrive.
const WAIT: Duration = Duration::from_secs(20);

fn summary(e: &Envelope) -> String {
    match &e.event {
        Event::NodeCreated(c) => format!("NodeCreated {}", c.node_name),
        Event::NodeInterruptionNotice(n) => {
            format!("NodeInterruptionNotice {} {}", n.node_name, n.cause)
        }
        Event::NodeUnexpectedlyLost(l) => {
            format!("NodeUnexpectedlyLost {} {}", l.node_name, l.cause)
        }
        other => other.event_type().to_string(),
    }
}

async fn next(rx: &mut mpsc::Receiver<Envelope>) -> String {
    let e = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no event from the watcher in time")
        .expect("watcher channel closed");
    assert_eq!(e.source, SOURCE);
    assert!(e.causation_id.is_none(), "watcher events are roots");
    assert_eq!(e.metadata.cluster_id, "lab-test");
    summary(&e)
}

#[tokio::test]
async fn docker_kill_and_stop_by_another_actor_arrive_as_events_but_own_actions_do_not() {
    let env = TestEnv::new("events").await;
    let config = env.config();
    let pool = DockerWorkerPool::new(env.docker.clone(), config.clone());
    let req = |e: &str| CreateWorker {
        name: None,
        requested_by: e.to_string(),
        extra_labels: BTreeMap::new(),
        pool: None,
    };
    let killed = pool.create(&req("evt-1")).await.unwrap();
    let stopped = pool.create(&req("evt-2")).await.unwrap();

    let (tx, mut rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let watcher = DockerEventsWatcher::for_pool(&pool, Metadata::new("lab-test", "local"));
    let task = tokio::spawn(watcher.run(tx, async {
        let _ = stop_rx.await;
    }));

    // Another actor starts a managed container: NodeCreated. Receiving it also proves the watcher
    // is subscribed before the real checks begin.
    let probe = format!("{}probe", config.name_prefix);
    env.docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(probe.clone()),
                ..Default::default()
            }),
            ContainerCreateBody {
                image: Some(TEST_IMAGE.into()),
                cmd: Some(vec!["pause".into()]),
                labels: Some(HashMap::from([
                    (LABEL_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
                    (LABEL_CLUSTER_ID.to_string(), config.cluster_id.clone()),
                    (TEST_LABEL.to_string(), env.id.clone()),
                ])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    env.docker
        .start_container(&probe, None::<StartContainerOptions>)
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, format!("NodeCreated {probe}"));

    // docker kill, through the engine API as another actor would.
    env.docker
        .kill_container(
            &killed.name,
            Some(KillContainerOptions {
                signal: "SIGKILL".into(),
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        format!("NodeInterruptionNotice {} docker_kill", killed.name)
    );
    assert_eq!(
        next(&mut rx).await,
        format!("NodeUnexpectedlyLost {} container_killed", killed.name)
    );

    // docker stop.
    env.docker
        .stop_container(
            &stopped.name,
            Some(StopContainerOptions {
                t: Some(5),
                signal: None,
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        format!("NodeInterruptionNotice {} docker_stop", stopped.name)
    );
    assert_eq!(
        next(&mut rx).await,
        format!("NodeUnexpectedlyLost {} container_stopped", stopped.name)
    );

    // The pool's own create, stop and removals: no events. The probe's removal by another actor
    // (`docker rm -f`) after them is the next event, so nothing came in between.
    let own = pool.create(&req("evt-3")).await.unwrap();
    pool.stop_worker(&own.name).await.unwrap();
    pool.remove_worker(&own.name).await.unwrap();
    pool.remove_worker(&killed.name).await.unwrap();
    pool.remove_worker(&stopped.name).await.unwrap();
    env.docker
        .remove_container(
            &probe,
            Some(bollard::query_parameters::RemoveContainerOptions {
                force: true,
                v: true,
                link: false,
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        next(&mut rx).await,
        format!("NodeInterruptionNotice {probe} docker_kill")
    );
    assert_eq!(
        next(&mut rx).await,
        format!("NodeUnexpectedlyLost {probe} container_killed")
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "the destroy after a reported loss adds nothing"
    );

    let _ = stop_tx.send(());
    tokio::time::timeout(WAIT, task)
        .await
        .expect("watcher stops on shutdown")
        .unwrap()
        .unwrap();
}
