//! Generated bindings for the `router` world in `wit/`. Nothing hand-written lives here.

wasmtime::component::bindgen!({
    world: "router",
    path: "../wit",
    imports: {
        "switchyard:router/context": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});
