// Swagger UI for the proxy's own /openapi.json; a file of its own (no inline script), so
// the page runs under the same Content-Security-Policy as the playground.
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
