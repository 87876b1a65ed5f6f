//! The CLI's pieces without a node: argument parsing, target resolution, and what
//! it prints for each answer.

use super::*;
use crate::limits::Limits;

#[derive(clap::Parser, Debug)]
enum Cli {
    Deploy(DeployArgs),
    Undeploy(UndeployArgs),
    Cells(CellsArgs),
    Id(IdArgs),
}

fn parse(args: &str) -> Result<Cli, clap::Error> {
    let command = Limits::show_defaults(<Cli as clap::CommandFactory>::command());
    let matches =
        command.try_get_matches_from(["ww"].into_iter().chain(args.split_whitespace()))?;
    <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
}

fn deploy(args: &str) -> DeployArgs {
    match parse(args).unwrap() {
        Cli::Deploy(args) => args,
        other => panic!("{other:?}"),
    }
}

const PEER: &str = "12D3KooWJDtTaxUEWWepHPh8o6tGQm7W4JhZYruzvKFwUXN6RZje";

fn addr() -> String {
    format!("/ip4/127.0.0.1/tcp/4001/p2p/{PEER}")
}

#[test]
fn deploy_takes_nodes_limits_and_dial_requests() {
    let args = deploy(&format!(
        "deploy cell.wasm --protocol /my/cell/1 --to {} --to {PEER} --memory-mb 1GiB --cpu-ms 500 --wall-s 9 --max-instances 3 --dial /a/1 --dial /b/1 --identity me.key",
        addr()
    ));
    assert_eq!(args.file, PathBuf::from("cell.wasm"));
    assert_eq!(args.protocol, StreamProtocol::new("/my/cell/1"));
    let nodes: Vec<Destination> = args
        .targets
        .to
        .iter()
        .map(|t| destination(t).unwrap())
        .collect();
    let peer: PeerId = PEER.parse().unwrap();
    assert_eq!(
        nodes[0],
        Destination {
            peer,
            addresses: vec![addr().parse().unwrap()]
        }
    );
    assert_eq!(
        nodes[1],
        Destination {
            peer,
            addresses: vec![]
        }
    );
    assert_eq!(args.targets.identity, Some(PathBuf::from("me.key")));
    assert_eq!(
        LimitOverrides::from(args.limits),
        LimitOverrides {
            memory_mb: Some(1024),
            cpu_ms: Some(500),
            wall_s: Some(9),
            max_instances: Some(3),
            ..Default::default()
        }
    );
    assert_eq!(
        args.dial_request(),
        Some(DialRequest::Only(vec!["/a/1".into(), "/b/1".into()]))
    );
    let any =
        deploy("deploy c.wasm --protocol /p/1 --all --bootstrap /ip4/127.0.0.1/tcp/1 --dial-any");
    assert!(any.targets.all);
    assert_eq!(any.dial_request(), Some(DialRequest::Any));
    assert_eq!(LimitOverrides::from(any.limits), LimitOverrides::default());
    let none = deploy(&format!("deploy c.wasm --protocol /p/1 --to {PEER}"));
    assert_eq!(none.dial_request(), None);
}

#[test]
fn deploy_refuses_what_cannot_work() {
    for args in [
        "deploy c.wasm --protocol /p/1".to_string(),
        "deploy c.wasm --protocol /p/1 --all".to_string(),
        format!(
            "deploy c.wasm --protocol /p/1 --to {PEER} --all --bootstrap {}",
            addr()
        ),
        format!("deploy c.wasm --protocol /p/1 --to {PEER} --dial /a/1 --dial-any"),
        format!("deploy c.wasm --protocol p/1 --to {PEER}"),
        "deploy c.wasm --protocol /p/1 --to /ip4/127.0.0.1/tcp/1".to_string(),
        format!("deploy c.wasm --protocol /p/1 --to {PEER} --memory-mb 1500k"),
        format!("undeploy /p/1 --to {PEER} --memory-mb 1"),
    ] {
        assert!(parse(&args).is_err(), "{args}");
    }
}

#[test]
fn requested_limits_show_no_node_default() {
    // `Limits::show_defaults` annotates flags named like a limit: a request has no
    // default, the node decides.
    let command = Limits::show_defaults(<Cli as clap::CommandFactory>::command());
    let deploy = command.find_subcommand("deploy").unwrap();
    let requests: Vec<_> = deploy
        .get_arguments()
        .filter(|arg| arg.get_id().as_str().starts_with("request_"))
        .collect();
    assert_eq!(requests.len(), 4);
    for arg in requests {
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        assert!(!help.contains("[default: "), "{}: {help}", arg.get_id());
    }
}

#[test]
fn undeploy_cells_and_id_parse() {
    let Cli::Undeploy(args) = parse(&format!("undeploy /p/1 --to {PEER}")).unwrap() else {
        panic!()
    };
    assert_eq!(args.protocol, StreamProtocol::new("/p/1"));
    assert_eq!(args.targets.to.len(), 1);
    let Cli::Cells(args) = parse(&format!("cells {}", addr())).unwrap() else {
        panic!()
    };
    assert!(matches!(args.node, Target::Addr(_)));
    let Cli::Id(args) = parse("id --identity x.key").unwrap() else {
        panic!()
    };
    assert_eq!(args.identity, Some(PathBuf::from("x.key")));
    assert!(destination(&Target::Any).is_err());
}

#[test]
fn id_prints_the_identity_files_peer_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.key");
    let created = load_identity(Some(path.clone())).unwrap();
    assert!(path.exists(), "created when missing");
    let again = load_identity(Some(path)).unwrap();
    assert_eq!(created.public().to_peer_id(), again.public().to_peer_id());
}

#[test]
fn a_walk_adds_each_new_node_once_with_full_addresses() {
    let (local, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
    let bootstrap: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{a}").parse().unwrap();
    let mut nodes = vec![destination(&Target::Addr(bootstrap.clone())).unwrap()];
    let found = vec![
        DhtPeer {
            peer: a,
            addresses: vec![],
        },
        DhtPeer {
            peer: local,
            addresses: vec![],
        },
        DhtPeer {
            peer: b,
            addresses: vec!["/ip4/127.0.0.1/tcp/2".parse().unwrap()],
        },
    ];
    assert_eq!(add_found(&mut nodes, found.clone(), local), 1);
    assert_eq!(
        add_found(&mut nodes, found, local),
        0,
        "nothing new the second time"
    );
    let full: Multiaddr = format!("/ip4/127.0.0.1/tcp/2/p2p/{b}").parse().unwrap();
    assert_eq!(
        nodes,
        [
            Destination {
                peer: a,
                addresses: vec![bootstrap]
            },
            Destination {
                peer: b,
                addresses: vec![full]
            }
        ]
    );
}

fn deployed(
    content: ContentId,
    replaced: Option<ContentId>,
    dial: Option<DialRequest>,
) -> DeployAnswer {
    DeployAnswer::Deployed {
        protocol: "/p/1".into(),
        content,
        granted: Limits {
            memory_mb: 128,
            wall_s: 0,
            ..Limits::DEFAULT
        },
        dial,
        replaced,
    }
}

#[test]
fn each_answer_prints_one_line_and_says_whether_it_succeeded() {
    let component = b"v2";
    let id = ContentId::of(component);
    let old = ContentId::of(b"v1");
    let request = DeployRequest::deploy(
        &StreamProtocol::new("/p/1"),
        component,
        Default::default(),
        None,
    );

    let (ok, line) = judge(&request, Ok(deployed(id, None, None)));
    assert!(ok);
    assert_eq!(
        line,
        format!("deployed {id} (granted: memory 128 MiB, cpu 10000 ms, wall none, instances 1000)")
    );
    let (ok, line) = judge(
        &request,
        Ok(deployed(id, Some(old), Some(DialRequest::Any))),
    );
    assert!(ok);
    assert!(
        line.ends_with(&format!("instances 1000, dial any), replacing {old}")),
        "{line}"
    );

    let refused = DeployAnswer::Refused {
        reason: "not a deployer".into(),
    };
    assert_eq!(
        judge(&request, Ok(refused)),
        (false, "refused: not a deployer".into())
    );
    let (ok, line) = judge(&request, Err(anyhow!("cannot reach it")));
    assert_eq!((ok, line.as_str()), (false, "failed: cannot reach it"));
    let (ok, line) = judge(&request, Ok(deployed(old, None, None)));
    assert!(
        !ok && line.contains(&format!("deployed {old}, not")),
        "{line}"
    );
    let undeployed = DeployAnswer::Undeployed {
        protocol: "/p/1".into(),
        content: old,
    };
    let (ok, line) = judge(&request, Ok(undeployed.clone()));
    assert!(
        !ok && line.starts_with("failed: an answer to another request"),
        "{line}"
    );

    let undeploy = DeployRequest::undeploy(&StreamProtocol::new("/p/1"));
    assert_eq!(
        judge(&undeploy, Ok(undeployed)),
        (true, format!("undeployed /p/1 ({old})"))
    );
    assert!(!judge(&undeploy, Ok(deployed(id, None, None))).0);
}

#[test]
fn ages_show_their_two_largest_units() {
    for (seconds, text) in [
        (0, "0s"),
        (42, "42s"),
        (192, "3m12s"),
        (3600, "1h0m"),
        (7500, "2h5m"),
        (4 * 86400 + 3 * 3600 + 59, "4d3h"),
    ] {
        assert_eq!(age(seconds), text, "{seconds}");
    }
}

#[test]
fn cells_print_as_an_aligned_table() {
    let cell = |protocol: &str, live, since| manage::CellListing {
        protocol: protocol.into(),
        content: ContentId::of(protocol.as_bytes()),
        kind: "connection".into(),
        source: "deployed".into(),
        live,
        since_unix_s: since,
    };
    let cells = [
        cell("/ww/echo/0.1.0", 3, 1000 - 192),
        cell("/p/1", 12, 2000),
    ];
    let table = format_cells(&cells, 1000);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3);
    let cid = ContentId::of(b"/p/1").to_string();
    let pad = " ".repeat(cid.len() - 3);
    assert_eq!(
        lines[0],
        format!("PROTOCOL        CID{pad}  KIND        SOURCE    LIVE  SINCE")
    );
    assert!(
        lines[1].starts_with("/ww/echo/0.1.0  bafkrei"),
        "{}",
        lines[1]
    );
    assert!(
        lines[1].ends_with("connection  deployed  3     3m12s"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].ends_with("12    0s"),
        "a clock behind `since` shows 0s: {}",
        lines[2]
    );
    assert_eq!(format_cells(&[], 0).lines().count(), 1, "the header alone");
}

#[tokio::test]
async fn a_node_sharing_the_deployers_identity_is_named_as_such() {
    let client = Client::new().unwrap();
    let me = Destination {
        peer: client.local_peer_id(),
        addresses: Vec::new(),
    };
    let request = DeployRequest::undeploy(&StreamProtocol::new("/p/1"));
    let error = ask(&client, &me, &request, None).await.unwrap_err();
    assert!(
        error.to_string().contains("share an identity file"),
        "{error}"
    );
}
