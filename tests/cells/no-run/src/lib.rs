//! A component of neither world: it exports a function of its own and no
//! `wasi:cli/run`, so a node must refuse it at start-up and say what is missing.
wit_bindgen::generate!({
    inline: "
        package test:no-run;
        interface greet {
            hello: func() -> string;
        }
        world no-run {
            export greet;
        }
    ",
});

struct Greeter;

impl exports::test::no_run::greet::Guest for Greeter {
    fn hello() -> String {
        "hello".into()
    }
}

export!(Greeter);
