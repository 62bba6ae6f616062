//! Issue 10, finding 1, as a user meets it: connections from one address
//! that send a handshake for the served torrent and then nothing, beside an
//! honest `download` from another address.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::util::*;

/// Opens `n` connections from `from` to `to`, each sending a handshake for
/// `info_hash` and then nothing.
fn silent_handshakes(
    from: IpAddr,
    to: SocketAddr,
    info_hash: [u8; 20],
    n: usize,
) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|i| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.bind(&SocketAddr::new(from, 0).into()).ok()?;
            s.connect_timeout(&to.into(), Duration::from_secs(2)).ok()?;
            let mut stream: TcpStream = s.into();
            let mut id = *b"-XX0000-silent000000";
            id[17..].copy_from_slice(format!("{:03}", i % 1000).as_bytes());
            let hs = p2pfile_engine::wire::Handshake::new(info_hash, id);
            stream.write_all(&hs.encode()).ok()?;
            Some(stream)
        })
        .collect()
}

/// Before: 70 such connections took all 60 slots of `serve`, and the
/// downloader timed out with "0 peers connected" (exit 3). Now one address
/// holds at most 8 slots and silent peers are closed after 5 s.
#[test]
fn silent_handshakes_from_one_address_leave_serve_serving() {
    let env = Env::new();
    let src = env.path("data.bin");
    let content = data(1_500_000, 3);
    std::fs::write(&src, &content).unwrap();
    let seed = env.serve(&host(), &[], &[&src]);
    let magnet = seed.magnet().to_string();
    let hex = magnet.split("btih:").nth(1).unwrap()[..40].to_string();
    let mut info_hash = [0u8; 20];
    for (i, b) in info_hash.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let to: SocketAddr = peer_of(&magnet).parse().unwrap();
    let from: IpAddr = format!("127.{}.0.200", test_net()).parse().unwrap();
    let mut hostile = silent_handshakes(from, to, info_hash, 70);
    assert!(
        hostile.len() >= 60,
        "only {} hostile connects",
        hostile.len()
    );
    std::thread::sleep(Duration::from_millis(500));

    let mut d = env.cmd();
    d.args(["--ip", &host(), "download", "--timeout", "20", "--dir"])
        .arg(env.path("out"))
        .arg(&magnet);
    let out = run(d, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(env.path("out/data.bin")).unwrap() == content);

    // The seed answered (sent its handshake to) at most 8 of the 70.
    let answered = hostile
        .iter_mut()
        .filter_map(|s| {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = [0u8; 68];
            matches!(s.read(&mut buf), Ok(n) if n > 0).then_some(())
        })
        .count();
    assert!(answered <= 8, "the seed gave one address {answered} slots");
}
