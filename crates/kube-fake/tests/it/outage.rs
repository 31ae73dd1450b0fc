//! Outages: an unreachable server fails every call and cuts watches, an
//! unavailable one answers 503; afterwards the same client and watcher go
//! on with the kept objects. Also the request records and the kubeconfig.

use axum::http::Method;
use kube::api::{ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio_stream::StreamExt;

use crate::support::{phase, pod, raw, run, start};

#[test]
fn an_outage_fails_calls_and_the_same_client_works_after_it() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        pods.create(&PostParams::default(), &pod("a", &[]))
            .await
            .expect("created");
        let mut stream =
            Box::pin(watcher(pods.clone(), watcher::Config::default()).default_backoff());
        loop {
            if let Ok(Event::InitDone) = stream.next().await.expect("the watcher goes on") {
                break;
            }
        }

        fake.set_outage(true);
        assert!(
            pods.get("a").await.is_err(),
            "an unreachable server fails the call"
        );
        assert!(pods.list(&ListParams::default()).await.is_err());
        // The cut watch shows as an error of the watcher.
        loop {
            if stream.next().await.expect("the watcher goes on").is_err() {
                break;
            }
        }
        fake.set_outage(false);

        // The same client works again; the objects were kept.
        assert_eq!(
            pods.get("a").await.expect("got").metadata.name.as_deref(),
            Some("a")
        );
        fake.set_running("ci", "a");
        loop {
            match stream.next().await.expect("the watcher goes on") {
                Ok(Event::Apply(p) | Event::InitApply(p)) if phase(&p) == "Running" => break,
                _ => {}
            }
        }
        fake.shutdown().await;
    });
}

#[test]
fn an_unavailable_server_answers_503_with_a_status() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        pods.create(&PostParams::default(), &pod("a", &[]))
            .await
            .expect("created");
        // kube's default client retries a 503 with back-off; this one
        // shows the answer.
        let mut config = fake.client_config("ci");
        config.default_retry = false;
        let client = kube::Client::try_from(config).expect("a client");
        fake.set_unavailable(true);
        let (code, body) = raw(&client, Method::GET, "/api/v1/namespaces/ci/pods/a", "", "").await;
        assert_eq!(code, 503);
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["reason"], "ServiceUnavailable");
        fake.set_unavailable(false);
        assert!(pods.get("a").await.is_ok());
        fake.shutdown().await;
    });
}

#[test]
fn requests_are_recorded_in_order() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        pods.create(&PostParams::default(), &pod("a", &[]))
            .await
            .expect("created");
        pods.list(&ListParams::default().labels("app=web"))
            .await
            .expect("a list");
        let _ = pods.get("nope").await;
        let requests = fake.requests();
        let seen: Vec<(&str, &str)> = requests
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("POST", "/api/v1/namespaces/ci/pods"),
                ("GET", "/api/v1/namespaces/ci/pods"),
                ("GET", "/api/v1/namespaces/ci/pods/nope"),
            ]
        );
        assert_eq!(
            requests[1].query.as_deref(),
            Some("&labelSelector=app%3Dweb")
        );
        assert!(requests.windows(2).all(|w| w[0].at <= w[1].at));
        fake.shutdown().await;
    });
}

#[test]
fn the_kubeconfig_points_a_client_here() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        pods.create(&PostParams::default(), &pod("a", &[]))
            .await
            .expect("created");
        let kubeconfig =
            kube::config::Kubeconfig::from_yaml(&fake.kubeconfig_yaml("ci")).expect("a kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("a config");
        assert_eq!(config.default_namespace, "ci");
        let client = kube::Client::try_from(config).expect("a client");
        let version = client.apiserver_version().await.expect("a version");
        assert_eq!(
            (version.major.as_str(), version.git_version.as_str()),
            ("1", "v1.34.0-kube-fake")
        );
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::default_namespaced(client);
        assert_eq!(
            pods.list(&ListParams::default())
                .await
                .expect("a list")
                .items
                .len(),
            1
        );
        fake.shutdown().await;
    });
}
