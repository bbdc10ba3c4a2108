//! Generated bindings for the contract versions in `wit/`: [`v1`] (`switchyard:router@0.1.0`)
//! and [`v2`] (`0.2.0`), each with its `router` world and, in `keyed`, its `keyed-router` world.
//! Nothing hand-written lives here.

/// The bindings of one contract version (`$path`, from this crate): the `router` world, and in
/// `keyed` the `keyed-router` world sharing its imports and types.
macro_rules! contract {
    ($path:literal) => {
        wasmtime::component::bindgen!({
            world: "router",
            path: $path,
            imports: {
                "switchyard:router/context": async | trappable,
                default: trappable,
            },
            exports: { default: async },
        });

        /// The `keyed-router` world: `router` plus `ordering-key`, with the imports and types
        /// above.
        pub mod keyed {
            wasmtime::component::bindgen!({
                world: "keyed-router",
                path: $path,
                exports: { default: async },
                with: {
                    "switchyard:router/types": super::switchyard::router::types,
                    "switchyard:router/context": super::switchyard::router::context,
                    "switchyard:router/config": super::switchyard::router::config,
                    "switchyard:router/log": super::switchyard::router::log,
                },
            });
        }
    };
}

/// `wit/v0.1`: one destination per decision.
pub mod v1 {
    contract!("../../wit/v0.1");
}

/// `wit/v0.2`: several destinations per decision, and a transformed payload.
pub mod v2 {
    contract!("../../wit/v0.2");
}
