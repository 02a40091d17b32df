// Start Swagger UI. A file rather than the usual inline <script>: the page's
// Content-Security-Policy allows scripts from this origin only.
"use strict";

window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    // Swagger UI's default asks validator.swagger.io for a badge: nothing may leave the service.
    validatorUrl: null,
  });
});
