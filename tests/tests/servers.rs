//! The real servers the suite runs against answer: Redis over RESP, SecantusDB over the MongoDB
//! wire protocol, including the unique-index behaviour the idempotent claim relies on.

use switchyard_tests::{mongo_url, redis_url, unique};

#[tokio::test]
async fn redis_answers() {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let key = unique("smoke");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .query_async(&mut conn)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, "v");
}

#[tokio::test]
async fn mongo_wire_server_enforces_unique_indexes() {
    use mongodb::bson::doc;
    let client = mongodb::Client::with_uri_str(mongo_url())
        .await
        .expect("mongo client");
    let db = client.database(&unique("smoke"));
    db.run_command(doc! { "ping": 1 }).await.expect("ping");
    let events = db.collection::<mongodb::bson::Document>("events");
    let index = mongodb::IndexModel::builder()
        .keys(doc! { "eventId": 1 })
        .options(
            mongodb::options::IndexOptions::builder()
                .unique(true)
                .build(),
        )
        .build();
    events.create_index(index).await.unwrap();
    events.insert_one(doc! { "eventId": "a" }).await.unwrap();
    let dup = events
        .insert_one(doc! { "eventId": "a" })
        .await
        .unwrap_err();
    assert!(dup.to_string().contains("E11000"), "{dup}");
    db.drop().await.unwrap();
}
