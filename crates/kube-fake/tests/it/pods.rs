//! Pods through the real `kube` client: create, get, list with selectors,
//! update and patch, status, delete, logs, and the error shapes.

use axum::http::Method;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::{phase, pod, raw, run, rv, start, status_of};

#[test]
fn create_fills_in_what_the_server_owns() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        let before = fake.resource_version();
        let created = pods
            .create(&PostParams::default(), &pod("p1", &[("app", "web")]))
            .await
            .expect("created");
        let meta = &created.metadata;
        assert_eq!(meta.namespace.as_deref(), Some("ci"));
        assert!(
            meta.uid.as_deref().is_some_and(|u| u.len() == 36),
            "{meta:?}"
        );
        assert!(meta.creation_timestamp.is_some());
        assert_eq!(rv(&created), before + 1);
        assert_eq!(phase(&created), "Pending");
        let status = created.status.as_ref().expect("a status");
        let scheduled = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled")
            .expect("PodScheduled");
        assert_eq!(scheduled.status, "True");
        assert_eq!(
            created.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("kube-fake")
        );
        // What the client gets back is what the server keeps.
        let got = pods.get("p1").await.expect("got");
        assert_eq!(got, created);
        assert_eq!(fake.pod("ci", "p1"), Some(created.clone()));
        assert_eq!(fake.pods("ci").len(), 1);
        assert!(fake.pods("other").is_empty());

        let again = status_of(pods.create(&PostParams::default(), &pod("p1", &[])).await);
        assert_eq!(again.code, 409);
        assert_eq!(again.reason, "AlreadyExists");
        assert_eq!(again.message, "pods \"p1\" already exists");
        let details = again.details.expect("details");
        assert_eq!(
            (details.name.as_str(), details.kind.as_str()),
            ("p1", "pods")
        );
        fake.shutdown().await;
    });
}

#[test]
fn generate_name_gives_distinct_names() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        let mut template = pod("", &[]);
        template.metadata.name = None;
        template.metadata.generate_name = Some("worker-".to_owned());
        let a = pods
            .create(&PostParams::default(), &template)
            .await
            .expect("a");
        let b = pods
            .create(&PostParams::default(), &template)
            .await
            .expect("b");
        let (a, b) = (
            a.metadata.name.expect("a name"),
            b.metadata.name.expect("a name"),
        );
        assert!(
            a.starts_with("worker-") && a.len() == "worker-".len() + 5,
            "{a}"
        );
        assert_ne!(a, b);
        fake.shutdown().await;
    });
}

#[test]
fn errors_have_the_real_servers_codes_and_shapes() {
    run(async {
        let (fake, client, pods) = start("ci").await;
        let base = "/api/v1/namespaces/ci/pods";
        let (code, body) = raw(
            &client,
            Method::GET,
            &format!("{base}/nope"),
            "application/json",
            "",
        )
        .await;
        assert_eq!(code, 404);
        assert_eq!(
            body,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "pods \"nope\" not found", "reason": "NotFound",
                   "details": {"name": "nope", "kind": "pods"}, "code": 404})
        );
        let missing = status_of(pods.get("nope").await);
        assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));

        let (code, body) = raw(&client, Method::POST, base, "application/json", "{not json").await;
        assert_eq!((code, body["reason"].as_str()), (400, Some("BadRequest")));

        let no_containers =
            json!({"metadata": {"name": "p"}, "spec": {"containers": []}}).to_string();
        let (code, body) = raw(
            &client,
            Method::POST,
            base,
            "application/json",
            &no_containers,
        )
        .await;
        assert_eq!(code, 422);
        assert_eq!(body["reason"], "Invalid");
        assert_eq!(
            body["message"],
            "Pod \"p\" is invalid: spec.containers: Required value"
        );
        assert_eq!(body["details"]["causes"][0]["field"], "spec.containers");

        let bad_name = json!({"metadata": {"name": "Bad_Name"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}})
        .to_string();
        let (code, body) = raw(&client, Method::POST, base, "application/json", &bad_name).await;
        assert_eq!(code, 422);
        assert!(
            body["message"].as_str().is_some_and(|m| m.starts_with(
                "Pod \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
            )),
            "{body}"
        );

        let wrong_type =
            json!({"metadata": {"name": "p"}, "spec": {"containers": "x"}}).to_string();
        let (code, body) = raw(&client, Method::POST, base, "application/json", &wrong_type).await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (400, Some("BadRequest")),
            "{body}"
        );

        let (code, body) = raw(
            &client,
            Method::GET,
            "/api/v1/namespaces/ci/configmaps",
            "application/json",
            "",
        )
        .await;
        assert_eq!((code, body["kind"].as_str()), (404, Some("Status")));
        let (code, body) = raw(
            &client,
            Method::GET,
            "/apis/apps/v1/deployments",
            "application/json",
            "",
        )
        .await;
        assert_eq!((code, body["kind"].as_str()), (404, Some("Status")));
        let (code, body) = raw(&client, Method::PUT, base, "application/json", "{}").await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (405, Some("MethodNotAllowed"))
        );

        let (code, body) = raw(
            &client,
            Method::GET,
            &format!("{base}?labelSelector=a%20in%20()"),
            "",
            "",
        )
        .await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (400, Some("BadRequest")),
            "{body}"
        );
        let (code, body) = raw(
            &client,
            Method::GET,
            &format!("{base}?fieldSelector=spec.image%3Dx"),
            "",
            "",
        )
        .await;
        assert_eq!(code, 400);
        assert_eq!(body["message"], "field label not supported: spec.image");
        fake.shutdown().await;
    });
}

#[test]
fn list_honours_label_and_field_selectors() {
    run(async {
        let (fake, client, pods) = start("ci").await;
        for (name, labels) in [
            ("a", vec![("app", "web"), ("tier", "front")]),
            ("b", vec![("app", "web"), ("tier", "back")]),
            ("c", vec![("app", "db")]),
            ("d", vec![]),
        ] {
            pods.create(&PostParams::default(), &pod(name, &labels))
                .await
                .expect("created");
        }
        fake.set_running("ci", "b");
        let other: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "other");
        other
            .create(&PostParams::default(), &pod("e", &[("app", "web")]))
            .await
            .expect("created");

        let names = |list: kube::core::ObjectList<Pod>| -> Vec<String> {
            list.items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect()
        };
        let check =
            |labels: &'static str, fields: &'static str, expected: &'static [&'static str]| {
                let pods = pods.clone();
                async move {
                    let lp = ListParams::default().labels(labels).fields(fields);
                    let got = names(pods.list(&lp).await.expect("a list"));
                    assert_eq!(got, expected, "labels {labels:?} fields {fields:?}");
                }
            };
        check("", "", &["a", "b", "c", "d"]).await;
        check("app=web", "", &["a", "b"]).await;
        check("app==web,tier!=front", "", &["b"]).await;
        check("app in (web, db)", "", &["a", "b", "c"]).await;
        check("app notin (web)", "", &["c", "d"]).await;
        check("tier", "", &["a", "b"]).await;
        check("!tier", "", &["c", "d"]).await;
        check("", "metadata.name=c", &["c"]).await;
        check("", "status.phase=Running", &["b"]).await;
        check("app=web", "status.phase!=Running", &["a"]).await;
        check(
            "",
            "metadata.namespace=ci,metadata.name!=a",
            &["b", "c", "d"],
        )
        .await;

        let list = pods.list(&ListParams::default()).await.expect("a list");
        let list_rv: u64 = list
            .metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("a list rv");
        assert_eq!(list_rv, fake.resource_version());

        let all: kube::Api<Pod> = kube::Api::all(client);
        let every = names(
            all.list(&ListParams::default().labels("app=web"))
                .await
                .expect("a list"),
        );
        assert_eq!(every, ["a", "b", "e"]);
        fake.shutdown().await;
    });
}

#[test]
fn list_pages_with_limit_and_continue() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        for name in ["a", "b", "c", "d", "e"] {
            pods.create(&PostParams::default(), &pod(name, &[]))
                .await
                .expect("created");
        }
        let mut seen = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut lp = ListParams::default().limit(2);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let page = pods.list(&lp).await.expect("a page");
            pages += 1;
            seen.extend(page.items.into_iter().filter_map(|p| p.metadata.name));
            token = page.metadata.continue_.filter(|c| !c.is_empty());
            if token.is_none() {
                break;
            }
        }
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
        assert_eq!(pages, 3);
        fake.shutdown().await;
    });
}

#[test]
fn delete_answers_the_pod_and_deletecollection_the_selected_ones() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        for (name, app) in [("a", "web"), ("b", "web"), ("c", "db")] {
            pods.create(&PostParams::default(), &pod(name, &[("app", app)]))
                .await
                .expect("created");
        }
        let deleted = pods
            .delete("c", &DeleteParams::default())
            .await
            .expect("deleted");
        let deleted = deleted
            .left()
            .expect("a pod, as the real server answers for pods");
        assert_eq!(deleted.metadata.name.as_deref(), Some("c"));
        assert!(fake.pod("ci", "c").is_none());
        let again = status_of(pods.delete("c", &DeleteParams::default()).await);
        assert_eq!(
            (again.code, again.message.as_str()),
            (404, "pods \"c\" not found")
        );

        let gone = pods
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("app=web"),
            )
            .await
            .expect("deleted")
            .left()
            .expect("a list");
        let names: Vec<String> = gone
            .items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert!(fake.pods("ci").is_empty());

        pods.create(&PostParams::default(), &pod("d", &[]))
            .await
            .expect("created");
        let wrong_uid = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: Some("nope".to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let conflict = status_of(pods.delete("d", &wrong_uid).await);
        assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
        assert!(fake.pod("ci", "d").is_some());
        fake.shutdown().await;
    });
}

#[test]
fn status_and_labels_change_through_the_api() {
    run(async {
        let (fake, client, pods) = start("ci").await;
        let created = pods
            .create(&PostParams::default(), &pod("p", &[("app", "web")]))
            .await
            .expect("created");

        let running = pods
            .patch_status(
                "p",
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Running"}})),
            )
            .await
            .expect("patched");
        assert_eq!(phase(&running), "Running");
        assert!(rv(&running) > rv(&created));

        // A strategic merge patch merges conditions by type.
        let patched = pods
            .patch_status(
                "p",
                &PatchParams::default(),
                &Patch::Strategic(
                    json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
                ),
            )
            .await
            .expect("patched");
        let types: Vec<String> = patched
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .map(|c| c.type_.clone())
            .collect();
        assert_eq!(types, ["PodScheduled", "Ready"]);

        let mut whole = patched.clone();
        whole.status.as_mut().expect("status").phase = Some("Succeeded".to_owned());
        let replaced = pods
            .replace_status("p", &PostParams::default(), &whole)
            .await
            .expect("replaced");
        assert_eq!(phase(&replaced), "Succeeded");

        // The status subresource changes nothing else; the main resource
        // changes no status.
        let mut relabelled = replaced.clone();
        relabelled.metadata.labels = Some([("app".to_owned(), "db".to_owned())].into());
        relabelled.status.as_mut().expect("status").phase = Some("Failed".to_owned());
        let after = pods
            .replace("p", &PostParams::default(), &relabelled)
            .await
            .expect("replaced");
        assert_eq!(
            after
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("db")
        );
        assert_eq!(phase(&after), "Succeeded");

        let merged = pods
            .patch(
                "p",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"extra": "1"}}})),
            )
            .await
            .expect("patched");
        assert_eq!(merged.metadata.labels.as_ref().map(|l| l.len()), Some(2));

        // A stale resourceVersion is a conflict; a spec change other than
        // the image is invalid.
        let conflict = status_of(pods.replace("p", &PostParams::default(), &relabelled).await);
        assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
        let mut respec = merged.clone();
        respec.spec.as_mut().expect("spec").containers[0].command = Some(vec!["sh".to_owned()]);
        let invalid = status_of(pods.replace("p", &PostParams::default(), &respec).await);
        assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
        let mut reimage = merged.clone();
        reimage.spec.as_mut().expect("spec").containers[0].image =
            Some("hodei/worker:test-alt".to_owned());
        pods.replace("p", &PostParams::default(), &reimage)
            .await
            .expect("an image may change");

        // JSON patch too.
        let (code, body) = raw(
            &client,
            Method::PATCH,
            "/api/v1/namespaces/ci/pods/p",
            "application/json-patch+json",
            &json!([{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}])
                .to_string(),
        )
        .await;
        assert_eq!(
            (code, &body["metadata"]["annotations"]["a"]),
            (200, &json!("b")),
            "{body}"
        );
        let (code, body) = raw(
            &client,
            Method::PATCH,
            "/api/v1/namespaces/ci/pods/p",
            "text/plain",
            "{}",
        )
        .await;
        assert_eq!(
            (code, body["reason"].as_str()),
            (415, Some("UnsupportedMediaType"))
        );

        let missing = status_of(
            pods.patch_status("nope", &PatchParams::default(), &Patch::Merge(json!({})))
                .await,
        );
        assert_eq!(missing.code, 404);
        assert!(fake.pod("ci", "p").is_some());
        fake.shutdown().await;
    });
}

#[test]
fn status_switches_act_as_a_kubelet() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        let mut spec = pod("p", &[]);
        let s = spec.spec.as_mut().expect("spec");
        s.init_containers = Some(vec![s.containers[0].clone()]);
        s.init_containers.as_mut().expect("init")[0].name = "init".to_owned();
        let created = pods
            .create(&PostParams::default(), &spec)
            .await
            .expect("created");
        let mut last = rv(&created);
        let mut step = |fake: &hodei_kube_fake::FakeKube| {
            let now = fake.resource_version();
            assert!(now > last, "every switch bumps the resourceVersion");
            last = now;
        };

        assert!(fake.set_waiting(
            "ci",
            "p",
            "main",
            "ImagePullBackOff",
            "Back-off pulling image \"x\""
        ));
        step(&fake);
        let p = pods.get("p").await.expect("got");
        let waiting = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .expect("statuses")[0]
            .state
            .as_ref()
            .and_then(|s| s.waiting.clone())
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("ImagePullBackOff"));
        assert_eq!(
            waiting.message.as_deref(),
            Some("Back-off pulling image \"x\"")
        );
        assert_eq!(phase(&p), "Pending");

        assert!(fake.set_running("ci", "p"));
        step(&fake);
        let p = pods.get("p").await.expect("got");
        assert_eq!(phase(&p), "Running");
        let status = p.status.as_ref().expect("status");
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "True");
        assert!(status.container_statuses.iter().flatten().all(|c| c.ready));
        let init = &status.init_container_statuses.as_ref().expect("init")[0];
        assert_eq!(
            init.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| t.exit_code),
            Some(0)
        );

        assert!(fake.set_terminated("ci", "p", "main", 137, "OOMKilled", ""));
        step(&fake);
        let p = pods.get("p").await.expect("got");
        assert_eq!(phase(&p), "Failed");
        let t = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .expect("statuses")[0]
            .state
            .as_ref()
            .and_then(|s| s.terminated.clone())
            .expect("terminated");
        assert_eq!((t.exit_code, t.reason.as_deref()), (137, Some("OOMKilled")));

        pods.create(&PostParams::default(), &pod("q", &[]))
            .await
            .expect("created");
        assert!(fake.set_unschedulable(
            "ci",
            "q",
            "0/1 nodes are available: 1 Insufficient memory."
        ));
        step(&fake);
        let q = pods.get("q").await.expect("got");
        let scheduled = q
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .expect("conditions")
            .iter()
            .find(|c| c.type_ == "PodScheduled")
            .cloned()
            .expect("PodScheduled");
        assert_eq!(
            (scheduled.status.as_str(), scheduled.reason.as_deref()),
            ("False", Some("Unschedulable"))
        );
        assert_eq!(
            scheduled.message.as_deref(),
            Some("0/1 nodes are available: 1 Insufficient memory.")
        );

        assert!(fake.set_pod_phase("ci", "q", "Succeeded"));
        step(&fake);
        assert!(fake.update_pod_status("ci", "q", |s| s.message = Some("done".to_owned())));
        step(&fake);
        assert_eq!(
            fake.pod("ci", "q")
                .and_then(|p| p.status?.message)
                .as_deref(),
            Some("done")
        );
        assert!(!fake.set_running("ci", "nope"));
        fake.shutdown().await;
    });
}

#[test]
fn logs_of_a_container_with_tail_lines() {
    run(async {
        let (fake, _client, pods) = start("ci").await;
        let mut two = pod("p", &[]);
        let s = two.spec.as_mut().expect("spec");
        let mut side = s.containers[0].clone();
        side.name = "side".to_owned();
        s.containers.push(side);
        pods.create(&PostParams::default(), &two)
            .await
            .expect("created");
        fake.set_running("ci", "p");
        fake.set_pod_log("ci", "p", "main", "one\ntwo\nthree\n");
        let lp = |container: &str, tail: Option<i64>| LogParams {
            container: Some(container.to_owned()),
            tail_lines: tail,
            ..LogParams::default()
        };
        assert_eq!(
            pods.logs("p", &lp("main", None)).await.expect("logs"),
            "one\ntwo\nthree\n"
        );
        assert_eq!(
            pods.logs("p", &lp("main", Some(2))).await.expect("logs"),
            "two\nthree\n"
        );
        assert_eq!(pods.logs("p", &lp("side", None)).await.expect("logs"), "");
        let unnamed = status_of(pods.logs("p", &LogParams::default()).await);
        assert_eq!(unnamed.code, 400);
        assert_eq!(
            unnamed.message,
            "a container name must be specified for pod p, choose one of: [main side]"
        );
        let unknown = status_of(pods.logs("p", &lp("nope", None)).await);
        assert_eq!(unknown.message, "container nope is not valid for pod p");
        let missing = status_of(pods.logs("nope", &lp("main", None)).await);
        assert_eq!(missing.code, 404);

        pods.create(&PostParams::default(), &pod("q", &[]))
            .await
            .expect("created");
        let waiting = status_of(pods.logs("q", &LogParams::default()).await);
        assert_eq!(
            waiting.message,
            "container \"main\" in pod \"q\" is waiting to start: ContainerCreating"
        );
        fake.shutdown().await;
    });
}

#[test]
fn bad_bodies_get_a_status_and_never_break_the_server() {
    run(async {
        let (fake, client, pods) = start("ci").await;
        pods.create(&PostParams::default(), &pod("p", &[]))
            .await
            .expect("created");
        let collection = "/api/v1/namespaces/ci/pods";
        let item = "/api/v1/namespaces/ci/pods/p";
        let bodies = [
            "[]",
            "\"x\"",
            "1",
            "null",
            "true",
            "{\"metadata\": []}",
            "{\"metadata\": {\"name\": 5}}",
            "{\"metadata\": {\"name\": \"p\"}, \"spec\": {\"containers\": [null]}}",
            "{\"kind\": \"Secret\", \"metadata\": {\"name\": \"p\"}}",
            "{\"apiVersion\": \"v2\"}",
            "\u{0}",
        ];
        let calls = [
            (Method::POST, collection, "application/json"),
            (Method::PUT, item, "application/json"),
            (Method::PATCH, item, "application/merge-patch+json"),
            (
                Method::PATCH,
                item,
                "application/strategic-merge-patch+json",
            ),
            (Method::PATCH, item, "application/json-patch+json"),
            (
                Method::PUT,
                "/api/v1/namespaces/ci/pods/p/status",
                "application/json",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/ci/pods/nope",
                "application/json",
            ),
        ];
        for (method, path, content_type) in calls {
            for body in bodies {
                let (code, answer) = raw(&client, method.clone(), path, content_type, body).await;
                // Each either works (a patch that replaces nothing) or is
                // refused with a Status; the server answers either way.
                if code >= 400 {
                    assert_eq!(answer["kind"], "Status", "{method} {path} {body}: {answer}");
                    assert!(
                        (400..500).contains(&code),
                        "{method} {path} {body}: {code} {answer}"
                    );
                }
            }
        }
        // The server still answers and the pod is still a pod.
        let p = pods.get("p").await.expect("got");
        assert_eq!(p.metadata.name.as_deref(), Some("p"));
        assert!(fake.pod("ci", "p").is_some());
        fake.shutdown().await;
    });
}

#[test]
fn graceful_manual_deletion_leaves_the_pod_terminating() {
    run(async {
        let options = hodei_kube_fake::FakeOptions {
            graceful_manual_deletion: true,
            ..hodei_kube_fake::FakeOptions::default()
        };
        let (fake, _client, pods) = crate::support::start_with(options, "ci").await;
        pods.create(&PostParams::default(), &pod("p", &[]))
            .await
            .expect("created");
        let terminating = pods
            .delete("p", &DeleteParams::default().grace_period(7))
            .await
            .expect("deleted")
            .left()
            .expect("the pod");
        assert!(terminating.metadata.deletion_timestamp.is_some());
        assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(7));
        assert_eq!(pods.get("p").await.expect("still there"), terminating);
        // Deleting again changes nothing; a new pod of that name waits.
        let again = pods
            .delete("p", &DeleteParams::default())
            .await
            .expect("deleted");
        assert_eq!(again.left().expect("the pod"), terminating);
        let taken = status_of(pods.create(&PostParams::default(), &pod("p", &[])).await);
        assert_eq!(taken.code, 409);
        assert!(fake.finish_deletion("ci", "p"));
        assert_eq!(status_of(pods.get("p").await).code, 404);
        // Grace period 0 is immediate.
        pods.create(&PostParams::default(), &pod("q", &[]))
            .await
            .expect("created");
        pods.delete("q", &DeleteParams::default().grace_period(0))
            .await
            .expect("deleted");
        assert!(fake.pod("ci", "q").is_none());
        fake.shutdown().await;
    });
}
