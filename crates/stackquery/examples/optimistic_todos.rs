//! Optimistic updates with rollback, against a simulated todo API (no network).
//!
//! A todo list is cached under `["todos"]`. Adding a todo writes it into the cached list
//! at once (`on_mutate`), before the server answers; if the server refuses, `on_error`
//! puts the previous list back; if it accepts, `on_success` swaps the placeholder for the
//! server's todo and `on_settled` invalidates the list so the next read goes back to the
//! server.
//!
//! Run: `cargo run --example optimistic_todos`

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stackquery::{key, MutationOptions, QueryClient, QueryError, QueryKey, QueryOptions};

#[derive(Clone, Debug, PartialEq)]
struct Todo {
    /// `None` while the server has not confirmed it.
    id: Option<u32>,
    title: String,
}

/// A pretend server: 100 ms per request; can be switched into a failing mode.
#[derive(Clone, Default)]
struct TodoApi {
    todos: Arc<Mutex<Vec<Todo>>>,
    next_id: Arc<AtomicU32>,
    down: Arc<AtomicBool>,
}

impl TodoApi {
    async fn list(&self) -> Result<Vec<Todo>, std::io::Error> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(self.lock().clone())
    }

    async fn add(&self, title: String) -> Result<Todo, std::io::Error> {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if self.down.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("503 service unavailable"));
        }
        let todo = Todo {
            id: Some(self.next_id.fetch_add(1, Ordering::SeqCst) + 1),
            title,
        };
        self.lock().push(todo.clone());
        Ok(todo)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Todo>> {
        // A poisoned lock only means another request panicked; the list is still valid.
        self.todos.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn todos_key() -> QueryKey {
    key!["todos"]
}

fn titles(client: &QueryClient) -> Vec<String> {
    client
        .get_query_data::<Vec<Todo>>(&todos_key())
        .map(|list| {
            list.iter()
                .map(|t| match t.id {
                    Some(id) => format!("#{id} {}", t.title),
                    None => format!("(saving) {}", t.title),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), QueryError> {
    let api = TodoApi::default();
    api.lock().push(Todo {
        id: Some(0),
        title: "buy milk".to_string(),
    });
    let client = QueryClient::new();

    let list_api = api.clone();
    let list = QueryOptions::new(todos_key(), move || {
        let api = list_api.clone();
        async move { api.list().await }
    });
    client.fetch_query(&list).await?;
    println!("initial list:        {:?}", titles(&client));

    let add_todo = {
        let api = api.clone();
        let (on_mutate, on_success, on_error, on_settled) = (
            client.clone(),
            client.clone(),
            client.clone(),
            client.clone(),
        );
        client.mutation(
            MutationOptions::new(move |title: String| {
                let api = api.clone();
                async move { api.add(title).await }
            })
            // Optimistic: show the todo now; keep the old list to roll back to.
            .on_mutate(move |title: &String| {
                let previous = on_mutate.get_query_data::<Vec<Todo>>(&todos_key());
                let mut next = previous.as_deref().cloned().unwrap_or_default();
                next.push(Todo {
                    id: None,
                    title: title.clone(),
                });
                if let Err(e) = on_mutate.set_query_data(todos_key(), next) {
                    eprintln!("optimistic write failed: {e}");
                }
                previous
            })
            // Confirmed: replace the placeholder with the server's todo.
            .on_success(move |saved: &Todo, title: &String, _previous| {
                let swapped =
                    on_success.update_query_data(todos_key(), |old: Option<&Vec<Todo>>| {
                        let mut next = old.cloned().unwrap_or_default();
                        next.retain(|t| !(t.id.is_none() && t.title == *title));
                        next.push(saved.clone());
                        Some(next)
                    });
                if let Err(e) = swapped {
                    eprintln!("could not swap in the saved todo: {e}");
                }
            })
            // Refused: put the previous list back.
            .on_error(move |err, title, previous| {
                println!("  on_error:          {title:?} refused ({err}); rolling back");
                if let Some(Some(previous)) = previous {
                    if let Err(e) = on_error.set_query_data_arc(todos_key(), previous.clone()) {
                        eprintln!("rollback failed: {e}");
                    }
                }
            })
            // Either way the server is the source of truth: mark the list stale.
            .on_settled(move |_, _, _, _| {
                let client = on_settled.clone();
                tokio::spawn(async move { client.invalidate_queries(todos_key()).await });
            }),
        )
    };

    let _status = add_todo.subscribe(|state| println!("  mutation state:    {:?}", state.status));

    // 1. The server is down: the todo appears at once, then disappears.
    println!("\n-- adding \"water the plants\" while the server is down");
    api.down.store(true, Ordering::SeqCst);
    let call = tokio::spawn(add_todo.mutate("water the plants".to_string()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    println!("  while pending:     {:?}", titles(&client));
    match call.await {
        Ok(Err(e)) => println!("  mutate returned:   error: {e}"),
        Ok(Ok(todo)) => println!("  mutate returned:   {todo:?} (unexpected)"),
        Err(e) => println!("  task failed: {e}"),
    }
    println!("  after rollback:    {:?}", titles(&client));

    // 2. The server is back: the todo appears at once and is confirmed.
    println!("\n-- adding \"write the docs\" with the server up");
    api.down.store(false, Ordering::SeqCst);
    let call = tokio::spawn(add_todo.mutate("write the docs".to_string()));
    tokio::time::sleep(Duration::from_millis(20)).await;
    println!("  while pending:     {:?}", titles(&client));
    let saved = match call.await {
        Ok(result) => result?,
        Err(e) => {
            println!("  task failed: {e}");
            return Ok(());
        }
    };
    println!("  mutate returned:   {saved:?}");
    println!("  after success:     {:?}", titles(&client));

    // Let the invalidation spawned by on_settled run.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let invalidated = client
        .get_query_state::<Vec<Todo>>(&todos_key())
        .is_some_and(|s| s.is_invalidated);
    println!("  list invalidated:  {invalidated}");
    client.refetch_query(&list).await?;
    println!("  refetched:         {:?}", titles(&client));
    Ok(())
}
