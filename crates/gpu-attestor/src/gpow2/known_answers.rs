//! Known answers, computed by the independent Python implementation of GPOW.md
//! (`tests/python/gpow2_reference.py`, run by hand; `tests/python/test_gpow2.py` compares the
//! two on more cases through the CLI) and pinned here, so a change to any step of GPoW-2 fails
//! here first, on every code path.

use super::challenge::{Challenge, GpuWork};
use super::isa::Isa;
use super::phase_a::{self, TileIndex};
use super::phase_b::{self, Dataset};
use super::prove::prove;

fn plain_keys() -> super::GpuKeys {
    Challenge::plain(12345, 16, 1, 64).gpu_keys()[0]
}

#[test]
fn master_and_keys() {
    let c = Challenge::plain(12345, 16, 1, 64);
    assert_eq!(hex::encode(c.master()), "773ef4e36d78a16c70f2bb2074a336e7a9d276f78e416c1e0f01f041e048db4e");
    let k = plain_keys();
    assert_eq!(hex::encode(k.master_g), "0e96594d0de31414ad6988f55ed265f2d0cd3e368b4dc880b5fcc8d392dd5977");
    assert_eq!(k.a, [2444050865, 2106029652]);
    assert_eq!(k.b, [2189894220, 2932336546]);
    assert_eq!(k.d, [2301240187, 3151057513]);
    assert_eq!(k.walk_key(&[0; 32]), [321450722, 3241925782]);
}

#[test]
fn tiles() {
    let k = plain_keys();
    let t0 = TileIndex { p: 0, ti: 0, tj: 0 };
    // A tile 2 chunks and a part deep (k = 4160), in a 64×64 product.
    let deep = TileIndex { p: 1, ti: 2, tj: 3 };
    for isa in Isa::all_available() {
        let tile = phase_a::tile(isa, &k, 16, t0);
        assert_eq!(
            tile[..16],
            [
                -4482, 3194, -6858, 3052, -39889, 3468, -29440, -14204, 10221, 9272, -1121, -17824, 33914, 10899,
                17900, 35813
            ],
            "{isa:?}"
        );
        assert_eq!(
            hex::encode(phase_a::tile_leaf(0, t0, &tile)),
            "7db90ae9afd8933321be5eebaf4cf1b5fff63651a7c7727ebe6d8b2a4d654cff"
        );
        let tile = phase_a::tile(isa, &k, 4160, deep);
        assert_eq!(tile[..8], [-254771, -461674, 347209, 189527, 180916, -233315, 293928, 326618], "{isa:?}");
        assert_eq!(
            hex::encode(phase_a::tile_leaf(0, deep, &tile)),
            "ab9ca73a410fd0561cbd879dbc7e0bf1ae8aeae59b4cbf96a9ef2cefe9928186"
        );
    }
}

#[test]
fn cache_items_dataset_items_and_lanes() {
    let k = plain_keys();
    assert_eq!(
        phase_b::cache_item(&k.master_g, 0),
        [
            0xe955e437, 0xfe8ca86c, 0x2b43c8f9, 0x417df388, 0x7ad11092, 0x36e11aff, 0x241ff7c7, 0x17635595, 0x73be55ce,
            0x7ad4f4b2, 0x88611301, 0x654281aa, 0xb4e7235b, 0x0b63dcb4, 0x0ee961cc, 0x2cee23d5
        ]
    );
    assert_eq!(
        phase_b::cache_item(&k.master_g, (1 << 22) - 1),
        [
            0x32c87659, 0xa2e0398d, 0x4cc7c50e, 0xb8c9018f, 0x0c4cb425, 0x4a5313dc, 0xb8df1cdd, 0x08cacdb0, 0xf6a6e774,
            0x16f859fa, 0x9e18beef, 0xe41b52b3, 0x9a5a5b99, 0xb5020d52, 0x1262fb0b, 0x5f99164f
        ]
    );
    let item0 = [
        0xb78ab4f4, 0x873075a0, 0xf4180d87, 0xc6056f98, 0x6208f27e, 0x92cc603d, 0x86b2d94c, 0xba4b712f, 0x59d6a82b,
        0xde474305, 0x6f2fa55d, 0x8aee56d1, 0x1b2e1b76, 0x18fccc83, 0xe665ec8d, 0x7e7cb57f,
    ];
    let item63 = [
        0x95001eea, 0x534b0e94, 0xfb98a208, 0xdc9031b6, 0x960e1c79, 0x19cd8df8, 0x450f52b5, 0x6cee7f0c, 0x13462803,
        0x205e9f18, 0x4f74150d, 0x19a52d22, 0x6a863f82, 0xef225ace, 0x5ed96af0, 0xb4b43de0,
    ];
    assert_eq!(phase_b::item_reference(&k, 0), item0);
    assert_eq!(phase_b::item_reference(&k, 63), item63);
    let lane0 = [0xc3efa565, 0x7ed3f02c, 0xc2f8699c, 0x3aaa249c, 0xebeed420, 0x9e93efcf, 0x121741e8, 0xa3bba4cd];
    let lane3 = [0xe43d17ef, 0xba36dd85, 0x630121e7, 0x5d47bf88, 0x3d67eefa, 0xb7297016, 0x31f777e3, 0x294f2825];
    let work = GpuWork { m: 16, n: 16, k: 16, count: 1, items: 64 };
    let walk_key = k.walk_key(&[0; 32]);
    for isa in Isa::all_available() {
        let d = Dataset::build(isa, &k, &work, 2).unwrap();
        assert_eq!((d.items()[0], d.items()[63]), (item0, item63), "{isa:?}");
        let cmix = d.walk(isa, walk_key, 2);
        assert_eq!((cmix[0], cmix[3]), (lane0, lane3), "{isa:?}");
        assert_eq!(phase_b::replay(isa, &k, &work, walk_key, &[3, 0], 1).unwrap(), vec![lane3, lane0], "{isa:?}");
    }
}

/// seed, dim, count, items, checksum, memory checksum.
type Case = (u64, u32, u32, u64, &'static str, Option<&'static str>);

/// The guide's checksums (plain mode): `(hex(R_A,0), hex(R_B,0))`.
#[test]
fn plain_mode_roots() {
    let cases: [Case; 4] = [
        (
            12345,
            16,
            1,
            64,
            "cd8282d626d94cbdd5f5eff3ac751ce0f79b650e56fb42ba080d43a9a7552858",
            Some("66daad26406279139569c486e570eb082c61daa43114562213feb2dc345aa18b"),
        ),
        (12345, 16, 3, 0, "41ba8e07e064392fc57895821f449a3df2054c9c703e38eec32f08323dde044e", None),
        (
            1,
            32,
            2,
            32,
            "9f83d4d19db89812c37f49543b7511e49a1736d49089b4c04bd59701fc0e3a41",
            Some("ecaafbb94f7c38e8edef343bc624a424b94db072d69303e555eacf4b9dac8040"),
        ),
        (
            0,
            16,
            1,
            4096,
            "14fde9e3e8846b02eebf090879f34a2a8753b0553db8efdab10ff39d849f14cd",
            Some("af4b0713a8171be393ff9e3cffec87230634e0f361bf9a690829a4701d10daeb"),
        ),
    ];
    for (seed, dim, count, items, checksum, memory) in cases {
        for isa in Isa::all_available() {
            let proof = prove(&Challenge::plain(seed, dim, count, items), &[0; 32], isa, 2, u64::MAX).unwrap();
            assert_eq!(proof.checksum(), checksum, "{isa:?} seed {seed}");
            assert_eq!(proof.memory_checksum().as_deref(), memory, "{isa:?} seed {seed}");
        }
    }
}
