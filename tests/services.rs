//! Real connections to the three services the distributed deployment uses. The test command starts
//! them (scripts/services.sh); these tests fail loudly when one is unreachable.

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

#[tokio::test]
async fn postgres_answers() {
    let url = env_or("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&pool)
        .await
        .expect("select 1");
    assert_eq!(one, 1);
}

#[tokio::test]
async fn redis_answers() {
    let url = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to Redis");
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn rabbitmq_answers() {
    let url = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            "scorer.test.connectivity".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("declare a queue");
    assert_eq!(queue.message_count(), 0);
}
