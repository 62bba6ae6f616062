//! Metadata poisoning (issue #10): `download MAGNET` whose `x.pe` lists a
//! hostile peer first and an honest `serve` second completes every time.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use p2pfile_engine::wire::{ExtHandshake, MetadataMsg};

use crate::util::*;

const LIMIT: Duration = Duration::from_secs(60);
/// The id the hostile peer wants ut_metadata messages under.
const HOSTILE_UT_METADATA: u8 = 3;
/// The size it announces: about 4 GiB, where the info dictionary is 200 bytes.
const WRONG_SIZE: u32 = 0xFFFF_0000;

/// A peer on 127.N.0.210 that offers metadata of [`WRONG_SIZE`] and answers
/// every request with 16 KiB of junk.
fn wrong_size_peer(info_hash: [u8; 20]) -> String {
    let l = TcpListener::bind((format!("127.{}.0.210", test_net()), 0)).unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in l.incoming().take(16) {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let _ = serve_wrong_metadata(&mut s, info_hash);
            });
        }
    });
    addr
}

fn send_extended(s: &mut TcpStream, id: u8, payload: &[u8]) -> std::io::Result<()> {
    let mut msg = ((payload.len() + 2) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&[20, id]);
    msg.extend_from_slice(payload);
    s.write_all(&msg)
}

fn serve_wrong_metadata(s: &mut TcpStream, info_hash: [u8; 20]) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut hs = [0u8; 68];
    s.read_exact(&mut hs)?;
    let mut ours = vec![19];
    ours.extend_from_slice(b"BitTorrent protocol");
    ours.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0]);
    ours.extend_from_slice(&info_hash);
    ours.extend_from_slice(b"-XX0000-wrong-size-p");
    s.write_all(&ours)?;
    let ext = ExtHandshake {
        m: [("ut_metadata".to_string(), HOSTILE_UT_METADATA)].into(),
        metadata_size: Some(WRONG_SIZE),
        ..Default::default()
    };
    send_extended(s, 0, &ext.encode())?;
    let mut their_id = None;
    // Bounded: at most this many messages per connection.
    for _ in 0..10_000 {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body)?;
        if body.len() < 2 || body[0] != 20 {
            continue;
        }
        if body[1] == 0 {
            their_id = ExtHandshake::decode(&body[2..])
                .ok()
                .and_then(|e| e.ext_id("ut_metadata"));
        } else if let (Some(id), Ok(MetadataMsg::Request { piece })) = (
            their_id,
            MetadataMsg::decode(&bytes::Bytes::copy_from_slice(&body[2..])),
        ) {
            let start = piece as usize * 16384;
            let len = (WRONG_SIZE as usize).saturating_sub(start).min(16384);
            let junk = MetadataMsg::Data {
                piece,
                total_size: WRONG_SIZE,
                data: vec![0xAA; len].into(),
            };
            send_extended(s, id, &junk.encode())?;
        }
    }
    Ok(())
}

#[test]
fn a_magnet_download_completes_beside_a_peer_with_an_absurd_metadata_size() {
    let env = Env::new();
    fs::create_dir_all(env.path("src")).unwrap();
    fs::write(env.path("src/f.bin"), data(300_000, 21)).unwrap();
    let seed = env.serve(&host(), &[], &[&env.path("src/f.bin")]);
    let magnet = seed.magnet().to_string();
    let hex = &magnet[20..60];
    let info_hash: [u8; 20] = (0..20)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let hostile = wrong_size_peer(info_hash);
    let hostile_first = format!(
        "{}&x.pe={hostile}&x.pe={}",
        without_peers(&magnet),
        peer_of(&magnet)
    );
    // Before the fix, the one metadata piece went to the hostile peer (and
    // back to it on every retry) about half the time: three downloads make
    // a pass by luck unlikely.
    for attempt in 0..3 {
        let dir = format!("dl{attempt}");
        // A state database of its own: serve's records the info dictionary,
        // which would spare the download the metadata fetch.
        let state = format!("dl{attempt}.db");
        let mut c = env.cmd();
        c.args(["--ip", &host(), "--state", &state, "download"])
            .args(["--timeout", "20", "--dir", &dir])
            .arg(&hostile_first);
        let out = run(c, LIMIT);
        assert_eq!(
            out.status.code(),
            Some(0),
            "run {attempt}: {}",
            stderr(&out)
        );
        assert_eq!(
            fs::read(env.path(&format!("{dir}/f.bin"))).unwrap(),
            fs::read(env.path("src/f.bin")).unwrap(),
            "run {attempt}"
        );
    }
    assert!(seed.terminate().success());
}
