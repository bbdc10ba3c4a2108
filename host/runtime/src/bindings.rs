//! Generated bindings for the `router` and `keyed-router` worlds in `wit/`. Nothing hand-written
//! lives here.

wasmtime::component::bindgen!({
    world: "router",
    path: "../../wit",
    imports: {
        "switchyard:router/context": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

/// The `keyed-router` world: `router` plus the `ordering-key` export. Its imports and types are
/// the ones generated above.
pub mod keyed {
    wasmtime::component::bindgen!({
        world: "keyed-router",
        path: "../../wit",
        exports: { default: async },
        with: {
            "switchyard:router/types": super::switchyard::router::types,
            "switchyard:router/context": super::switchyard::router::context,
            "switchyard:router/config": super::switchyard::router::config,
            "switchyard:router/log": super::switchyard::router::log,
        },
    });
}
