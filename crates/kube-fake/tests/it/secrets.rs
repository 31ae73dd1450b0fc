//! Secrets: create (with `stringData`), conflicts, get, list with labels,
//! delete and deletecollection.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::support::{run, start, status_of};

fn secret(name: &str, app: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "stringData": {"token": "s3cr3t"},
        "data": {"other": "b3RoZXI="}
    }))
    .expect("a secret")
}

#[test]
fn secrets_are_stored_listed_and_deleted() {
    run(async {
        let (fake, client, _pods) = start("ci").await;
        let secrets: Api<Secret> = Api::namespaced(client, "ci");
        let created = secrets
            .create(&PostParams::default(), &secret("s1", "web"))
            .await
            .expect("created");
        let data = created.data.clone().expect("data");
        assert_eq!(
            data.get("token"),
            Some(&ByteString(b"s3cr3t".to_vec())),
            "stringData is folded into data"
        );
        assert_eq!(data.get("other"), Some(&ByteString(b"other".to_vec())));
        assert!(created.string_data.is_none());
        assert_eq!(created.type_.as_deref(), Some("Opaque"));
        assert_eq!(secrets.get("s1").await.expect("got"), created);

        let again = status_of(
            secrets
                .create(&PostParams::default(), &secret("s1", "web"))
                .await,
        );
        assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
        assert_eq!(again.message, "secrets \"s1\" already exists");
        let missing = status_of(secrets.get("nope").await);
        assert_eq!(
            (missing.code, missing.message.as_str()),
            (404, "secrets \"nope\" not found")
        );
        let bad_key: Secret = serde_json::from_value(
            json!({"metadata": {"name": "s9"}, "stringData": {"bad key": "x"}}),
        )
        .expect("a secret");
        let invalid = status_of(secrets.create(&PostParams::default(), &bad_key).await);
        assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));

        secrets
            .create(&PostParams::default(), &secret("s2", "web"))
            .await
            .expect("created");
        secrets
            .create(&PostParams::default(), &secret("s3", "db"))
            .await
            .expect("created");
        let names = |list: kube::core::ObjectList<Secret>| -> Vec<String> {
            list.items
                .into_iter()
                .filter_map(|s| s.metadata.name)
                .collect()
        };
        let web = names(
            secrets
                .list(&ListParams::default().labels("app=web"))
                .await
                .expect("a list"),
        );
        assert_eq!(web, ["s1", "s2"]);
        let typed = names(
            secrets
                .list(&ListParams::default().fields("type=Opaque,metadata.name!=s1"))
                .await
                .expect("a list"),
        );
        assert_eq!(typed, ["s2", "s3"]);

        // Deleting a secret answers a Status, as the real server does.
        let deleted = secrets
            .delete("s3", &DeleteParams::default())
            .await
            .expect("deleted");
        let status = deleted.right().expect("a Status");
        assert_eq!(status.details.map(|d| d.name), Some("s3".to_owned()));
        let gone = secrets
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("app=web"),
            )
            .await
            .expect("deleted")
            .left()
            .expect("a list");
        assert_eq!(gone.items.len(), 2);
        assert!(fake.secrets("ci").is_empty());
        fake.shutdown().await;
    });
}
