//! A cell that also imports an interface no ww node provides: loading it must fail
//! with an error that names the import.
wit_bindgen::generate!({
    inline: "
        package test:extra;
        interface missing {
            hello: func();
        }
        world extra {
            include wetware:streams/cell@0.1.0;
            import missing;
        }
    ",
    path: "../../../wit",
    world: "test:extra/extra",
    generate_all,
});

struct Extra;

impl exports::wasi::cli::run::Guest for Extra {
    fn run() -> Result<(), ()> {
        let _connection = wetware::streams::streams::create_connection();
        test::extra::missing::hello();
        Ok(())
    }
}

export!(Extra);
