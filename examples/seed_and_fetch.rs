//! The engine without the CLI: seed a file and fetch it in one process,
//! through the same public API that `serve` and `download` use.
//!
//! ```sh
//! cargo run --example seed_and_fetch -- /etc/hostname
//! ```
//!
//! Both sessions listen on 127.0.0.1 with random ports; the downloader
//! learns the seed from the magnet's peer hint, fetches the metadata
//! (BEP 9) and the pieces, and writes the copy into a temporary directory.

use std::net::Ipv4Addr;
use std::sync::Arc;

use p2pfile_engine::builder;
use p2pfile_engine::magnet::Magnet;
use p2pfile_engine::{Event, PortChoice, Session, SessionConfig, Source, Target};

fn config() -> SessionConfig {
    SessionConfig {
        ip: Ipv4Addr::LOCALHOST,
        port: PortChoice::Range(20000..=40000),
        bootstrap: Vec::new(),
        dht: false,
        upload_limit: 0,
        download_limit: 0,
        extensions: Vec::new(),
        zone: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: seed_and_fetch PATH")?;
    let built = builder::build(path.as_ref())?;
    let info = Arc::new(built.info);

    let seed = Session::start(config()).await?;
    seed.add(
        Source::Info(info.clone()),
        Target::Seed { root: built.root },
        Vec::new(),
    )?;
    let magnet = Magnet {
        info_hash: info.info_hash(),
        name: Some(info.name.clone()),
        peers: vec![seed.local_addr()],
    };
    println!("{magnet}");

    let dir = std::env::temp_dir().join(format!("p2pfile-example-{}", std::process::id()));
    let leecher = Session::start(config()).await?;
    let mut events = leecher.events().expect("a new session's events");
    let download = leecher.add(
        Source::Magnet(magnet),
        Target::download(dir.clone()),
        Vec::new(),
    )?;
    while let Some(event) = events.recv().await {
        match event.event {
            Event::Metadata { name, total, .. } => println!("metadata: {name}, {total} bytes"),
            Event::Completed => {
                let s = leecher.stats(download).expect("still in the session");
                println!(
                    "complete: {} ({} bytes)",
                    dir.join(&info.name).display(),
                    s.total
                );
                break;
            }
            Event::Failed { error } => return Err(error.into()),
            _ => {}
        }
    }
    leecher.shutdown().await;
    seed.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
