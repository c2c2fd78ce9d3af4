//! One throwaway database per test, so tests never see each other's data and can run
//! in parallel. PostgreSQL must answer: a test that cannot reach it fails, never skips.

use tokio_postgres::NoTls;
use uuid::Uuid;

/// Server-level URL; each test creates its own database on it.
pub fn admin_url() -> String {
    std::env::var("TOOLPLANE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = admin_url();
        let (client, conn) = tokio_postgres::connect(&admin, NoTls)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} must answer for this test (make test starts one): {e}"));
        tokio::spawn(conn);
        let name = format!("tp_test_{}", Uuid::new_v4().simple());
        client.execute(&format!("CREATE DATABASE {name}"), &[]).await.unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot be async: a short-lived thread with its own runtime cleans up.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok((client, conn)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                        tokio::spawn(conn);
                        let _ = client
                            .execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), &[])
                            .await;
                    }
                });
            }
        })
        .join();
    }
}
